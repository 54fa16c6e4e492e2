"""The tensor-parallel all-reduce on this machine's GPUs: NCCL against the one-shot over symmetric memory,
and the all-reduce fused with the residual add and RMSNorm against the two kernels it replaces.

    python -m benchmarks.all_reduce [--world-size 2] [--dtype bfloat16] [--results-dir benchmarks]

One process per GPU. For each size (a decode batch's hidden states: rows x 4096 values), both paths of
engine_service.distributed.all_reduce are checked against the exact sum (eagerly and replayed from a CUDA
graph) and timed as the engine runs them: 64 all-reduces captured in one CUDA graph (one decode step of a
32-layer model), replayed; per-call microseconds = replay time / 64. The fused all-reduce + add + RMSNorm
(`all_reduce_add_rms_norm`) is checked against NCCL + the separate norm kernel the same ways (the updated
residual exactly, the normed output to bf16 rounding) and timed beside one-shot + norm and NCCL + norm.
Prints one JSON object; with --results-dir, records it as an `all_reduce` row. Exits 1 if anything was wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import UTC, datetime

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine_service.distributed import all_reduce
from engine_service.distributed.group import NCCL_DEFAULTS
from engine_service.ops import triton_norm
from pagoda.bench.results import git_commit, record_result

HIDDEN = 4096
CALLS_PER_GRAPH = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_input(rank: int, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Small integers: their bf16 sums are exact, so any wrong element shows."""
    g = torch.Generator(device="cpu").manual_seed(1000 + rank)
    return torch.randint(-8, 9, (numel,), generator=g).to(dtype).to(device)


def time_graph(fn, x: torch.Tensor, replays: int = 20) -> float:
    """Microseconds per call of fn(x), CALLS_PER_GRAPH calls captured in one graph."""
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn(x)
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / replays / CALLS_PER_GRAPH * 1e6


def nccl(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def check_and_time_fused_norm(x: torch.Tensor, rank: int, dtype, device, wrong: list[str]) -> dict:
    """all_reduce_add_rms_norm against NCCL + the norm kernel: eagerly, three calls from one CUDA graph
    (replayed twice: the buffer halves alternate), and timed as 64 calls per graph beside the two kernels
    it replaces (one-shot + norm, NCCL + norm)."""
    rows = x.shape[0]
    weight = (torch.rand(HIDDEN, generator=torch.Generator().manual_seed(7)) + 0.5).to(dtype).to(device)
    residuals = [rank_input(10 + i, x.numel(), dtype, device).view(rows, HIDDEN) for i in range(3)]
    wants = [triton_norm.fused_add_rms_norm(nccl(x.clone()), r.clone(), weight, 1e-5) for r in residuals]

    def check(got, want, where):
        if not torch.equal(got[1], want[1]):
            wrong.append(f"fused add+norm residual {where}, {rows} rows")
        if not torch.allclose(got[0].float(), want[0].float(), atol=1e-2, rtol=1e-2):
            wrong.append(f"fused add+norm output {where}, {rows} rows")

    check(all_reduce.all_reduce_add_rms_norm(x, residuals[0].clone(), weight, 1e-5), wants[0], "eager")
    inputs = [r.clone() for r in residuals]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [all_reduce.all_reduce_add_rms_norm(x, r, weight, 1e-5)[0] for r in inputs]
    for replay in range(2):
        for r, start in zip(inputs, residuals, strict=True):
            r.copy_(start)
        graph.replay()
        torch.cuda.synchronize()
        for i, want in enumerate(wants):
            check((outs[i], inputs[i]), want, f"in a CUDA graph (replay {replay}, call {i})")
    residual = residuals[0].clone()
    paths = {
        "fused_norm_us": lambda t: all_reduce.all_reduce_add_rms_norm(t, residual, weight, 1e-5),
        "one_shot_then_norm_us": lambda t: triton_norm.fused_add_rms_norm(
            all_reduce._one_shot(t), residual, weight, 1e-5
        ),
        "nccl_then_norm_us": lambda t: triton_norm.fused_add_rms_norm(nccl(t), residual, weight, 1e-5),
    }
    return {name: round(time_graph(fn, x.clone()), 2) for name, fn in paths.items()}


def worker(rank: int, args, port: int, queue) -> None:
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world_size, device_id=device
    )
    dtype = getattr(torch, args.dtype)
    rows_list = [int(r) for r in args.rows.split(",")]
    max_bytes = max(rows_list) * HIDDEN * dtype.itemsize
    one_shot = all_reduce.install(device, dtype, HIDDEN, max_bytes)  # fused: half the rows (2 halves)
    installed = one_shot is not None
    rows_out, wrong = [], []
    for rows in rows_list:
        numel = rows * HIDDEN
        expected = sum(rank_input(r, numel, torch.float32, device) for r in range(args.world_size)).to(dtype)
        x = rank_input(rank, numel, dtype, device)
        row = {"rows": rows, "bytes": numel * dtype.itemsize}
        paths = {"nccl": lambda t: nccl(t.clone())}
        if installed:
            paths["one_shot"] = one_shot
        for name, fn in paths.items():
            if not torch.equal(fn(x), expected):
                wrong.append(f"{name} eager, {rows} rows")
            out = torch.empty_like(x)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out.copy_(fn(x))
            graph.replay()
            if not torch.equal(out, expected):
                wrong.append(f"{name} in a CUDA graph, {rows} rows")
        row["nccl_us"] = round(time_graph(nccl, x.clone()), 2)
        if installed:
            row["one_shot_us"] = round(time_graph(one_shot, x), 2)
        if installed and all_reduce._fused_norm.fits(x.view(rows, HIDDEN), x.view(rows, HIDDEN)):
            row.update(check_and_time_fused_norm(x.view(rows, HIDDEN), rank, dtype, device, wrong))
        rows_out.append(row)
    # Past the symmetric buffer, all_reduce() hands the tensor to NCCL: still the exact sum.
    numel = max(rows_list) * HIDDEN + HIDDEN
    expected = sum(rank_input(r, numel, torch.float32, device) for r in range(args.world_size)).to(dtype)
    if not torch.equal(all_reduce.all_reduce(rank_input(rank, numel, dtype, device)), expected):
        wrong.append("all_reduce() past the one-shot buffer")
    dist.barrier()
    if rank == 0:
        queue.put({"installed": installed, "rows": rows_out, "wrong": wrong})
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--rows", default="1,8,32,64,128,256,512", help="decode batch sizes (rows of 4096)")
    p.add_argument("--results-dir", default="", help="append the record to DIR/results.jsonl")
    p.add_argument("--commit", default=None, help="recorded in the row (default: git rev-parse HEAD)")
    args = p.parse_args(argv)
    if torch.cuda.device_count() < args.world_size:
        print(f"needs {args.world_size} GPUs, sees {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    for k, v in NCCL_DEFAULTS.items():
        os.environ.setdefault(k, v)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(worker, args=(args, free_port(), queue), nprocs=args.world_size, join=True)
    result = queue.get()
    record = {
        "kind": "all_reduce",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": args.commit or git_commit(),
        "card": torch.cuda.get_device_name(0),
        "world_size": args.world_size,
        "dtype": args.dtype,
        "calls_per_graph": CALLS_PER_GRAPH,
        **result,
    }
    print(json.dumps(record))
    if args.results_dir:
        record_result(record, args.results_dir)
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
