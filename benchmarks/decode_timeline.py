"""A decode step end to end on the device timeline: busy time, and idle time the host or the device caused.

    python -m benchmarks.decode_timeline --shape llama-8b [--tensor-parallel-size 2] [--batch 1]
        [--tokens 64] [--results-dir benchmarks --commit SHA] [--trace-dir DIR]

Builds the engine (dummy weights, bf16, decode graphs), runs one warm-up generation, then profiles one
more (`LLM.start_profile`: torch.profiler on every rank, host and CUDA) of `--batch` prompts of 512 tokens
to `--tokens` outputs, and reads rank 0's trace (benchmarks/timeline.py): per decode step the wall time,
the device's busy time, and its idle gaps, split into host-bound (the next op was launched only after the
device ran dry) and the device's own; then the gaps that cost the most, and the device ops outside the
decode graph; rank 0's critical path per op (what each op added to the step's end: under PDL the ops' own
durations overlap and do not add up); the device time per step by kernel family (matrix products,
attention, all-reduce, norms, ...); and the other ranks' medians. One `decode_timeline` line to
results.jsonl with --results-dir, holding each rank's device ops per step and rank 0's critical path too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import timeline
from engine_service import SamplingParams
from pagoda.bench.results import git_commit, record_result
from pagoda.bench.shapes import dummy_llm

MARKER = "_sample_kernel"  # the sampler's kernel: once per step, at its end


def read_steps(path: str) -> tuple[list[dict], list[timeline.StepTimeline]]:
    """A rank's trace events and its decode steps (past the prefill and the first decode steps)."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    return events, timeline.device_steps(events, MARKER)[2:]


def ops_per_step(
    events: list[dict], outside_graphs: bool = False, top: int = 20, critical_path: bool = False
) -> list[tuple]:
    """(name, launches, µs) a decode step, of the device ops over the steps read_steps keeps: their own
    durations, or with `critical_path` what each op added to the step's end (timeline.critical_path_by_op)."""
    ends = timeline.marker_ends(events, MARKER)
    n = len(ends) - 3  # the steps between ends[2] and ends[-1]
    if critical_path:
        ops = timeline.critical_path_by_op(events, ends[2], ends[-1], top=top)
    else:
        ops = timeline.device_time_by_op(events, ends[2], ends[-1], top=top, outside_graphs=outside_graphs)
    return [(name, round(count / n, 2), round(us / n, 1)) for name, count, us in ops]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-8b")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--custom-all-reduce", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--trace-dir", help="where the ranks' Chrome traces go (default: a temporary folder)")
    ap.add_argument("--results-dir")
    ap.add_argument("--commit", default=None, help="recorded in the row (default: git rev-parse HEAD)")
    ap.add_argument("--note", default="", help="recorded in the row (what this run varies)")
    args = ap.parse_args(argv)

    import torch

    llm = dummy_llm(
        args.shape,
        max_num_seqs=max(8, args.batch),
        tensor_parallel_size=args.tensor_parallel_size,
        custom_all_reduce=args.custom_all_reduce,
        pdl=args.pdl,
    )
    vocab = llm.engine.model_config.vocab_size
    prompts = [[(7 * i + 13 * j) % (vocab - 3) + 3 for j in range(512)] for i in range(args.batch)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    llm.generate(prompt_token_ids=prompts, sampling_params=params)  # warm: every kernel compiled
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="pagoda-trace-")
    llm.start_profile(trace_dir)
    llm.generate(prompt_token_ids=prompts, sampling_params=params)
    paths = llm.stop_profile()
    llm.engine.shutdown()

    events, steps = read_steps(paths[0])
    summary = timeline.summarize(steps)
    if not steps:
        print(f"no steps found (marker {MARKER!r}) in {paths[0]}", file=sys.stderr)
        return 1
    label = f"{args.shape} TP={args.tensor_parallel_size} batch {args.batch}"
    print(f"\n{label}: {summary['steps']} decode steps, medians per step (rank 0's device)")
    print(
        f"  wall {summary['wall_us']:.0f} µs = busy {summary['busy_us']:.0f} + idle waiting for the host "
        f"{summary['host_idle_us']:.0f} + idle otherwise {summary['device_idle_us']:.0f}"
    )
    print(f"\n{'per step':>9} {'mean µs':>8}  {'host?':5}  gap between (launched by)")
    for g in summary["gaps"]:
        host = "host" if g["host_bound"] else "dev"
        between = f"{g['before']} -> {g['after']} ({g['launch']})"
        print(f"{g['per_step']:9.2f} {g['mean_us']:8.1f}  {host:5}  {between}")
    critical = ops_per_step(events, critical_path=True)
    print("\ncritical path: µs each op added to the step's end, and launches per step:")
    for name, launches, us in critical:
        print(f"  {us:8.1f}  {launches:5.1f}x  {name}")
    outside = ops_per_step(events, outside_graphs=True)
    print("\ndevice ops outside the decode graph (µs and launches per step):")
    for name, launches, us in outside:
        print(f"  {us:8.1f}  {launches:5.1f}x  {name}")
    families = timeline.by_family(ops_per_step(events, top=10_000))
    print("\ndevice time per step by kernel family (own durations; µs and launches):")
    for name, f in families.items():
        print(f"  {f['us']:8.1f}  {f['launches']:6.1f}x  {name}")
    other_ranks = {}
    for rank, path in enumerate(paths[1:], start=1):  # the others' medians: a late rank shows here
        their_events, their_steps = read_steps(path)
        theirs = timeline.summarize(their_steps)
        other_ranks[rank] = {
            k: theirs.get(k) for k in ("wall_us", "busy_us", "host_idle_us", "device_idle_us")
        }
        print(f"rank {rank}: " + ", ".join(f"{k} {v}" for k, v in other_ranks[rank].items()))
        other_ranks[rank]["device_ops"] = ops_per_step(their_events)
    print(f"\ntraces: {', '.join(paths)}")
    if args.results_dir:
        record = {
            "kind": "decode_timeline",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "card": torch.cuda.get_device_name(0),
            "commit": args.commit or git_commit(),
            "shape": args.shape,
            "tensor_parallel_size": args.tensor_parallel_size,
            "custom_all_reduce": args.custom_all_reduce,
            "pdl": args.pdl,
            "batch": args.batch,
            **summary,
            "other_ranks": other_ranks,
            "outside_graph": outside,
            "device_ops": ops_per_step(events),  # every op, the decode graph's included
            "critical_path": critical,  # adds up to the step, where device_ops overlap under PDL
            "families": families,
            **({"note": args.note} if args.note else {}),
        }
        record_result(record, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
