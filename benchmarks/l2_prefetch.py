"""GPU experiment: does a decode GEMV run faster when its weight was pulled into L2 during the idle window
before it (attention at batch 1: HBM barely used), and from where must the prefetch be issued?

    python benchmarks/l2_prefetch.py --out l2.jsonl

One CUDA graph of CALLS iterations, each: a large GEMV (the TP=2 gate_up, 117 MB: it evicts the L2), a spin
kernel of WINDOW µs on one SM (the idle window), then the GEMV under test over its own weight copy. Variants:
  none    no prefetch;
  side    a prefetch kernel (cp.async.bulk.prefetch.L2 of the whole weight) on a forked stream, after the
          large GEMV: a branch of the graph beside the window, off the main stream's path;
  inline  the same kernel on the main stream between the large GEMV and the window;
  warm    the weight read just before the window by a copy of the GEMV itself (an upper bound on what L2
          residency gives; the extra GEMV's own time is subtracted via the `warm_twice` baseline).
Per-iteration µs (median replay / CALLS); the saving is none − variant. On one H200 (7355d74) nothing
saved: an L2-resident weight did not make the GEMV faster (benchmarks/RESULTS.md, eighth session).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.graph_timing import graph_call_us  # noqa: E402
from engine_service.ops import triton_gemv as tg  # noqa: E402

SHAPES = [
    ("8b-tp2-o", 4096, 2048),
    ("8b-tp2-qkv", 3072, 4096),
    ("8b-tp1-o", 4096, 4096),
    ("8b-tp1-qkv", 6144, 4096),
]
CALLS = 20


@triton.jit
def _spin_kernel(flag_ptr, ns):
    start = _globaltimer(ns)
    now = start
    while now - start < ns:
        now = _globaltimer(ns)
    tl.store(flag_ptr, now - start)


@triton.jit
def _globaltimer(dep):
    """The global nanosecond timer; `dep` (any int64, unused) only gives the asm an operand."""
    return tl.inline_asm_elementwise(
        "mov.u64 $0, %globaltimer;", "=l,l", [dep], dtype=tl.int64, is_pure=False, pack=1
    )


@triton.jit
def _prefetch_kernel(base_ptr, nbytes, chunk, CHUNKS: tl.constexpr):
    """Program p asks the L2 for chunks [p * CHUNKS, (p + 1) * CHUNKS) of `chunk` bytes each (clipped)."""
    pid = tl.program_id(0)
    offs = (pid * CHUNKS + tl.arange(0, CHUNKS)).to(tl.int64) * chunk
    size = tl.minimum(tl.maximum(nbytes - offs, 0), chunk).to(tl.int32)
    addr = base_ptr.to(tl.pointer_type(tl.int8)).to(tl.int64, bitcast=True) + offs
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r",
        [addr, size],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


def prefetch(weight: torch.Tensor, programs: int, chunks: int = 128) -> None:
    nbytes = weight.numel() * weight.element_size()
    chunk = -(-nbytes // (programs * chunks * 16)) * 16
    _prefetch_kernel[(programs,)](weight, nbytes, chunk, CHUNKS=chunks, num_warps=4)


def iteration_us(
    big, x, ws, xk, window_us: int, variant: str, side: torch.cuda.Stream, programs: int
) -> float:
    """Per-iteration µs of CALLS iterations in one graph (see the module docstring for the variants)."""
    flag = torch.zeros(1, dtype=torch.int64, device=x.device)

    def call(i: int) -> None:
        tg.gemv(x, big[i % len(big)])  # evicts the L2
        w = ws[i % len(ws)]
        if variant == "side":
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                prefetch(w, programs)
        elif variant == "inline":
            prefetch(w, programs)
        elif variant in ("warm", "warm_twice"):
            tg.gemv(xk, w)
        if window_us:
            _spin_kernel[(1,)](flag, window_us * 1000)
        # warm_twice: a second cold GEMV, what the extra one of `warm` costs without the L2's help
        tg.gemv(xk, ws[(i + 1) % len(ws)] if variant == "warm_twice" else w)
        if variant == "side" and i == CALLS - 1:
            torch.cuda.current_stream().wait_stream(side)  # the capture must end joined

    return graph_call_us(call, CALLS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", default="0,4,8,12")
    ap.add_argument("--programs", default="1,8,32")
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    big = [torch.randn(14336, 4096, dtype=dt, device=dev) for _ in range(2)]
    x = torch.randn(1, 4096, dtype=dt, device=dev)
    side = torch.cuda.Stream()
    windows = [int(w) for w in args.windows.split(",")]
    programs = [int(p) for p in args.programs.split(",")]
    for name, n, k in SHAPES:
        ws = [torch.randn(n, k, dtype=dt, device=dev) for _ in range(4)]
        xk = torch.randn(1, k, dtype=dt, device=dev)
        ref = xk.float() @ ws[0].float().T
        err = ((tg.gemv(xk, ws[0]).float() - ref).norm() / ref.norm()).item()
        for w in ws:  # compile the kernels outside the captures
            prefetch(w, 8)
        _spin_kernel[(1,)](torch.zeros(1, dtype=torch.int64, device=dev), 1000)
        torch.cuda.synchronize()
        rows = []
        for window in windows:
            row = {
                v: iteration_us(big, x, ws, xk, window, v, side, 1) for v in ("none", "warm", "warm_twice")
            }
            for p in programs:
                row[f"side_p{p}"] = iteration_us(big, x, ws, xk, window, "side", side, p)
                row[f"inline_p{p}"] = iteration_us(big, x, ws, xk, window, "inline", side, p)
            row = {key: round(v, 2) for key, v in row.items()}
            print(f"{name:12s} window {window:2d} us: " + "  ".join(f"{key} {v}" for key, v in row.items()))
            rows.append({"window_us": window, **row})
        record = {
            "kind": "l2_prefetch",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "card": torch.cuda.get_device_name(),
            "commit": args.commit,
            "shape": name,
            "n": n,
            "k": k,
            "rel_err": err,
            "rows": rows,
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
