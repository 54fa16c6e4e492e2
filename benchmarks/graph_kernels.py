"""The kernels of one decode CUDA graph replay, grouped: where a decode step's device time goes.

    python benchmarks/graph_kernels.py --shape llama-8b --batch 1 [--tensor-parallel-size 2]
        [--no-custom-all-reduce] [--context 512] [--results-dir benchmarks --commit SHA]

Builds the engine (dummy weights, bf16, decode graphs captured), replays the graph for each batch size back
to back with torch.profiler on (rank 0's kernels with tensor parallelism: every rank replays, the
collectives need them all), and prints each kernel's launches and µs per replay, then the sums by group
(matrix products, attention, all-reduce, norms, ...) beside the graph's timed replay. The difference between
the timed replay and the kernels' sum is the time between kernels. One `graph_kernels` line per batch size
to results.jsonl with --results-dir.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pagoda.bench.report import append_jsonl  # noqa: E402
from pagoda.bench.shapes import dummy_llm  # noqa: E402

# kernel name pattern -> group; the first that matches
GROUPS = [
    (r"all_reduce_add_rms_norm", "all-reduce+norm"),  # fused (ops/triton_all_reduce_norm.py)
    (r"nccl|all_reduce|allreduce", "all-reduce"),
    (r"paged_attention|reduce_splits", "attention"),
    (r"gemm|gemv|nvjet|xmma|cutlass|cublas|matmul|splitk", "matrix products"),
    (r"rms_norm", "norms"),
    (r"rotary", "rotary"),
    (r"kv_cache", "KV write"),
    (r"silu", "activation"),
    (r"embedding|index_select|indexSelect", "embedding"),
    (r"copy|Memcpy|Memset|fill|elementwise|cat", "copies"),
]


def group_of(name: str) -> str:
    for pattern, group in GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return group
    return "other"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-8b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--custom-all-reduce", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--results-dir")
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args(argv)

    import torch

    llm = dummy_llm(
        args.shape,
        max_num_seqs=max(args.batch),
        tensor_parallel_size=args.tensor_parallel_size,
        custom_all_reduce=args.custom_all_reduce,
    )
    executor = llm.engine.executor
    for batch in args.batch:
        graph_ms = executor.time_decode_graph(batch, args.context, 100)
        kernels = executor.profile_decode_graph(batch, args.context, args.replays)
        if graph_ms is None or not kernels:
            print(f"no decode graph (or no kernels seen) at batch {batch}", file=sys.stderr)
            return 1
        groups: dict[str, list[float]] = {}
        print(f"\n{args.shape} TP={args.tensor_parallel_size} batch {batch} context {args.context}")
        print(f"{'µs/replay':>10} {'launches':>9}  kernel")
        for name, launches, us in kernels:
            g = groups.setdefault(group_of(name), [0.0, 0.0])
            g[0] += launches
            g[1] += us
            print(f"{us:10.1f} {launches:9.0f}  {name[:110]}")
        kernel_us = sum(g[1] for g in groups.values())
        launches = sum(g[0] for g in groups.values())
        print(f"\ngraph replay {graph_ms * 1e3:.0f} µs; kernels {kernel_us:.0f} µs, {launches:.0f} launches")
        for name, (n, us) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:16} {us:8.0f} µs  {n:5.0f} launches")
        print("(a one-shot or fused all-reduce kernel's time includes its wait for the other ranks)")
        if args.results_dir:
            record = {
                "kind": "graph_kernels",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "card": torch.cuda.get_device_name(0),
                "commit": args.commit,
                "shape": args.shape,
                "tensor_parallel_size": args.tensor_parallel_size,
                "custom_all_reduce": args.custom_all_reduce,
                "batch": batch,
                "context": args.context,
                "graph_us": round(graph_ms * 1e3, 1),
                "kernel_us": round(kernel_us, 1),
                "launches": round(launches),
                "groups": {k: {"us": round(us, 1), "launches": round(n)} for k, (n, us) in groups.items()},
            }
            append_jsonl(record, args.results_dir)
    llm.engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
