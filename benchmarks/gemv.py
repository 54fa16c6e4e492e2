"""GPU benchmark of the decode GEMV (`triton_gemv.gemv`) against torch.nn.functional.linear (cuBLAS).

    python -m benchmarks.gemv [--results-dir benchmarks]   # table configs, seconds
    python -m benchmarks.gemv --sweep                      # also a config sweep: 53 s on an H200

Shapes: the per-layer projections of llama-8b (TP=1 and TP=2 half width) and llama-1b, and their LM heads,
bf16, M = 1, 2, 4, 8 rows, no bias. Each time is one CUDA graph of CALLS back-to-back calls over distinct
weight copies (more than L2_DEFEAT bytes of them, so every call streams its weight from HBM, as a decode step
does), per call, median of the replays. Split-K in cuBLAS shows up here as its reduce kernel inside the
graph, as in the engine. Our kernel launches with PDL where the card has it (sm_90+, ops/triton_pdl.py), as
in the engine, so each call's start overlaps the previous one's end; `gemv_no_pdl_us` is the same without.
`--no-pdl` launches it without PDL throughout (sweep included): back to back, one GEMV's programs launched
early hold shared memory the one before it could use, which the engine, with small kernels between the
products, never sees.
TB/s counts W, x and y bytes once; the copy bandwidth (1 GiB device copy, read + write) is the ceiling.
One `gemv` row per shape to results.jsonl with --results-dir, with every M's figures and, with --sweep, the
best config found per M.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from datetime import UTC, datetime

import torch

from benchmarks.graph_timing import graph_call_us
from engine_service.ops import triton_gemv as tg
from engine_service.ops import triton_pdl
from pagoda.bench.results import git_commit, record_result

SHAPES = [  # name, N, K
    ("8b-tp2-qkv", 3072, 4096),
    ("8b-tp2-o", 4096, 2048),
    ("8b-tp2-gate_up", 14336, 4096),
    ("8b-tp2-down", 4096, 7168),
    ("8b-tp1-qkv", 6144, 4096),
    ("8b-tp1-o", 4096, 4096),
    ("8b-tp1-gate_up", 28672, 4096),
    ("8b-tp1-down", 4096, 14336),
    ("1b-qkv", 3072, 2048),
    ("1b-o", 2048, 2048),
    ("1b-gate_up", 16384, 2048),
    ("1b-down", 2048, 8192),
    ("8b-lm_head", 128256, 4096),  # the vocabulary (llama-3's 128,256 tokens), TP=1
    ("8b-tp2-lm_head", 64128, 4096),  # half of it on each of two ranks
    ("1b-lm_head", 128256, 2048),
]
M_VALUES = (1, 2, 4, 8)
CALLS = 50
L2_DEFEAT = 256 << 20  # 5x the 50 MB L2 of H100/H200
SMEM_BUDGET = 200 << 10  # of the 227 KiB a block may use on sm_90


def copy_tbps() -> float:
    src = torch.empty(1 << 28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 10 * 2 * src.numel() * 4 / (start.elapsed_time(end) * 1e-3) / 1e12


def graph_us(fn, weights: list[torch.Tensor], reps: int = 10) -> float:
    """Per-call time of one graph replaying `fn(weights[i % len])` CALLS times (median replay)."""
    fn(weights[0])  # compile, and allocate any workspace outside the capture
    return graph_call_us(lambda i: fn(weights[i % len(weights)]), CALLS, reps)


def sweep_configs(n: int, k: int) -> list[tg.GemvConfig]:
    """Tile shapes x split counts, each with as many stages (2..6) as fit the shared-memory budget."""
    configs = []
    for block_n in (16, 32, 64, 128):
        for block_k in (128, 256, 512):
            stage_bytes = (block_n + tg.BLOCK_M) * block_k * 2
            stages = min(6, SMEM_BUDGET // stage_bytes)
            if stages < 2:
                continue
            for split in (1, 2, 4, 8, 16):
                if k >= split * block_k and math.ceil(n / block_n) * split <= 8192:
                    configs.append(tg.GemvConfig(block_n, block_k, split, 4, stages))
    return configs


def bench_shape(name: str, n: int, k: int, sweep: bool, bw: float) -> dict:
    w_bytes = n * k * 2
    copies = max(2, math.ceil(L2_DEFEAT / w_bytes))
    weights = torch.empty(copies, n, k, device="cuda", dtype=torch.bfloat16).normal_()
    rows = []
    for m in M_VALUES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        nbytes = w_bytes + (m * k + m * n) * 2

        def tbps(us: float, nbytes=nbytes) -> float:
            return nbytes / (us * 1e-6) / 1e12

        ref = torch.nn.functional.linear(x.float(), weights[0].float())
        cfg = tg.choose_config(n, k, m, 2, torch.cuda.get_device_properties(0).multi_processor_count)
        got = tg.gemv(x, weights[0], config=cfg).float()
        torch_us = graph_us(lambda w, x=x: torch.nn.functional.linear(x, w), list(weights))
        ours_us = graph_us(lambda w, x=x, cfg=cfg: tg.gemv(x, w, config=cfg), list(weights))
        pdl = triton_pdl.enabled()
        triton_pdl.set_enabled(False)
        no_pdl_us = graph_us(lambda w, x=x, cfg=cfg: tg.gemv(x, w, config=cfg), list(weights))
        triton_pdl.set_enabled(pdl)
        row = dict(
            m=m,
            torch_us=round(torch_us, 2),
            torch_tbps=round(tbps(torch_us), 3),
            gemv_us=round(ours_us, 2),
            gemv_tbps=round(tbps(ours_us), 3),
            gemv_no_pdl_us=round(no_pdl_us, 2),
            config=dataclasses.asdict(cfg),
            rel_err=float((got - ref).norm() / ref.norm()),
        )
        line = (
            f"{name:15s} N={n:5d} K={k:5d} M={m}  torch {torch_us:6.1f} us {tbps(torch_us):5.2f} TB/s  "
            f"gemv {ours_us:6.1f} us {tbps(ours_us):5.2f} TB/s ({ours_us / torch_us:4.2f}x)  "
            f"err {row['rel_err']:.1e}  no PDL {no_pdl_us:6.1f} us"
        )
        if sweep:
            best = None
            for c in sweep_configs(n, k):
                try:
                    us = graph_us(lambda w, x=x, c=c: tg.gemv(x, w, config=c), list(weights), reps=5)
                except Exception as exc:  # a config past the card's resources: skip it, say so
                    print(f"  skip {c}: {type(exc).__name__}", file=sys.stderr)
                    continue
                if best is None or us < best[0]:
                    best = (us, c)
            us, c = best
            row.update(best_us=round(us, 2), best_tbps=round(tbps(us), 3), best_config=dataclasses.asdict(c))
            line += f"  best {us:6.1f} us {tbps(us):5.2f} TB/s {c}"
        print(line, flush=True)
        rows.append(row)
    del weights
    torch.cuda.empty_cache()
    return dict(
        shape=name, n=n, k=k, dtype="bf16", calls_per_graph=CALLS, copies=copies, copy_tbps=bw, rows=rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results-dir", help="append one row per shape to DIR/results.jsonl")
    parser.add_argument("--sweep", action="store_true", help="also time a config sweep per shape and M")
    parser.add_argument("--shapes", nargs="*", default=None, help="only these shape names")
    parser.add_argument("--commit", default=None, help="recorded in each row (default: git rev-parse HEAD)")
    parser.add_argument("--no-pdl", action="store_true", help="launch our kernel without PDL throughout")
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if args.shapes is None or s[0] in args.shapes]
    if not shapes:
        parser.error(f"no shape among {[s[0] for s in SHAPES]}")
    if not torch.cuda.is_available():
        print(
            "benchmarks.gemv needs a CUDA GPU (it times CUDA graphs); none is visible here",
            file=sys.stderr,
        )
        return 2
    triton_pdl.set_enabled(not args.no_pdl)
    t0 = time.time()
    bw = round(copy_tbps(), 3)
    print(f"{torch.cuda.get_device_name(0)}: copy bandwidth {bw:.2f} TB/s", flush=True)
    commit = args.commit or git_commit()
    for name, n, k in shapes:
        record = {
            "kind": "gemv",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "card": torch.cuda.get_device_name(0),
            "commit": commit,
            **bench_shape(name, n, k, args.sweep, bw),
            "pdl": not args.no_pdl,
        }
        if args.results_dir:
            record_result(record, args.results_dir)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
