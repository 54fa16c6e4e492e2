"""Where a decode step's wall time goes on the device: busy, or idle waiting on the host or on other causes.

Reads a Chrome trace written by torch.profiler (LLM.start_profile / stop_profile: host and CUDA activity)
and cuts the device timeline into steps at a marker kernel that runs once per step (the sampler's). In
each step it adds up the device's busy time (the union of kernels, copies and memsets) and its idle gaps.
A gap is *host-bound* when the call that launched the next device op started after the gap had begun: the
device ran dry because the host had not launched yet. Otherwise the op was queued in time and the gap is
the device's own (launch latency, a graph's start, a wait on another stream or another rank).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import median

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")

# kernel name pattern -> family; the first that matches
FAMILIES = [
    (r"all_reduce_add_rms_norm", "all-reduce+norm"),  # fused (ops/triton_all_reduce_norm.py)
    (r"nccl|all_reduce|allreduce", "all-reduce"),
    (r"paged_attention|reduce_splits", "attention"),
    (r"gemm|gemv|nvjet|xmma|cutlass|cublas|matmul|splitk", "matrix products"),
    (r"rms_norm", "norms"),
    (r"rotary", "rotary"),
    (r"kv_cache", "KV write"),
    (r"silu", "activation"),
    (r"embedding|index_select|indexSelect", "embedding"),
    (r"sample", "sampling"),
    (r"copy|Memcpy|Memset|fill|elementwise|cat", "copies"),
]


@dataclass
class Gap:
    before: str  # the device op that ended when the gap began
    after: str  # the device op that ended it
    us: float
    host_bound: bool
    launch: str  # the API call that launched `after` (cudaLaunchKernel, cudaGraphLaunch, ...)
    host_late_us: float  # how long after the gap began the launch call started (0 when not host-bound)


@dataclass
class StepTimeline:
    wall_us: float
    busy_us: float
    gaps: list[Gap] = field(default_factory=list)

    @property
    def host_idle_us(self) -> float:
        return sum(g.us for g in self.gaps if g.host_bound)

    @property
    def device_idle_us(self) -> float:
        return sum(g.us for g in self.gaps if not g.host_bound)


def _correlation(event: dict) -> int | None:
    return (event.get("args") or {}).get("correlation")


def marker_ends(events: list[dict], marker: str) -> list[float]:
    """When each kernel whose name holds `marker` ended, in time order (a trace's events are not)."""
    kernels = (e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel")
    return sorted(e["ts"] + e["dur"] for e in kernels if marker in e["name"])


def device_steps(events: list[dict], marker: str, min_gap_us: float = 1.0) -> list[StepTimeline]:
    """The steps between consecutive ends of `marker` kernels (a substring of the kernel name), in order.
    Gaps of at most `min_gap_us` are not listed (their time is idle still: wall = busy + all gaps)."""
    device = sorted(
        (e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"]
    )
    launches = {_correlation(e): e for e in events if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS}
    ends = marker_ends(device, marker)
    steps = []
    i = 0
    for start, end in zip(ends, ends[1:], strict=False):
        while i < len(device) and device[i]["ts"] < start:
            i += 1
        busy, gaps = 0.0, []
        covered_to, before = start, marker
        j = i
        while j < len(device) and device[j]["ts"] + device[j]["dur"] <= end + 1e-3:
            op = device[j]
            op_start, op_end = op["ts"], op["ts"] + op["dur"]
            gap = op_start - covered_to
            if gap > min_gap_us:
                call = launches.get(_correlation(op))
                late = call["ts"] - covered_to if call is not None else 0.0
                gaps.append(
                    Gap(before, op["name"], gap, late > 0, call["name"] if call else "?", max(late, 0.0))
                )
            if op_end > covered_to:
                busy += op_end - max(op_start, covered_to)
                covered_to, before = op_end, op["name"]
            j += 1
        steps.append(StepTimeline(end - start, busy, gaps))
    return steps


def summarize(steps: list[StepTimeline], top: int = 12) -> dict:
    """Medians per step, and the gaps grouped by (before, after, host-bound): count per step, mean µs."""
    if not steps:
        return {"steps": 0}
    groups: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    launches: dict[tuple[str, str, bool], str] = {}
    for step in steps:
        for g in step.gaps:
            key = (g.before[:60], g.after[:60], g.host_bound)
            groups[key].append(g.us)
            launches[key] = g.launch
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "steps": len(steps),
        "wall_us": round(median(s.wall_us for s in steps), 1),
        "busy_us": round(median(s.busy_us for s in steps), 1),
        "host_idle_us": round(median(s.host_idle_us for s in steps), 1),
        "device_idle_us": round(median(s.device_idle_us for s in steps), 1),
        "gaps": [
            {
                "before": before,
                "after": after,
                "host_bound": host,
                "launch": launches[(before, after, host)],
                "per_step": round(len(us) / len(steps), 2),
                "mean_us": round(sum(us) / len(us), 1),
            }
            for (before, after, host), us in ranked
        ],
    }


def device_time_by_op(
    events: list[dict], start: float, end: float, top: int = 15, outside_graphs: bool = False
) -> list[tuple[str, int, float]]:
    """(name, count, µs) of the device ops between two timestamps, most time first; with `outside_graphs`
    only those not launched by a CUDA graph launch."""
    graph_launches = {
        _correlation(e) for e in events if e.get("cat") in LAUNCH_CATS and "GraphLaunch" in e.get("name", "")
    }
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS and start <= e["ts"] < end:
            if outside_graphs and _correlation(e) in graph_launches:
                continue
            t = totals[e["name"][:80]]
            t[0] += 1
            t[1] += e["dur"]
    return sorted(((n, int(c), us) for n, (c, us) in totals.items()), key=lambda x: -x[2])[:top]


def critical_path_by_op(
    events: list[dict], start: float, end: float, top: int = 20
) -> list[tuple[str, int, float]]:
    """(name, count, µs) of the device ops that end in (start, end], most time first: each op is charged
    the time by which it moved the end of the device's work on (its end minus the latest end before it,
    any idle gap included; 0 if it ended inside earlier work). Under programmatic dependent launch the ops'
    own durations overlap their neighbours' and no longer add up; these charges add up to end - start."""
    device = sorted(
        (
            e
            for e in events
            if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS and start < e["ts"] + e["dur"] <= end
        ),
        key=lambda e: e["ts"],
    )
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    covered_to = start
    for e in device:
        op_end = e["ts"] + e["dur"]
        t = totals[e["name"][:80]]
        t[0] += 1
        t[1] += max(0.0, op_end - covered_to)
        covered_to = max(covered_to, op_end)
    return sorted(((n, int(c), us) for n, (c, us) in totals.items()), key=lambda x: -x[2])[:top]


def family_of(name: str) -> str:
    return next((f for pattern, f in FAMILIES if re.search(pattern, name, re.IGNORECASE)), "other")


def by_family(ops: list[tuple]) -> dict[str, dict[str, float]]:
    """The (name, launches, µs) a step of every device op, summed by kernel family, most time first. The
    ops' own durations: under PDL they overlap, so the sum may pass the step (critical_path does not)."""
    families: dict[str, list[float]] = {}
    for name, launches, us in ops:
        f = families.setdefault(family_of(name), [0.0, 0.0])
        f[0] += launches
        f[1] += us
    ranked = sorted(families.items(), key=lambda kv: -kv[1][1])
    return {name: {"us": round(us, 1), "launches": round(n, 2)} for name, (n, us) in ranked}
