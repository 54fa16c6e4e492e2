"""Tune the fused MoE kernel's launch shapes (ops/triton_moe.py `_CONFIGS`) on this GPU, per expert shape.

    python -m benchmarks.tune_moe --results-dir benchmarks --shapes qwen3-30b-a3b   # one shape a call
    python -m benchmarks.tune_moe --shapes mixtral-8x7b --tokens 1,8,64,512          # a part of one

A shape times about 150 candidates (each compiled once, then served from Triton's cache, which a later
call on the same machine reuses): a few minutes on an H100; split --tokens over calls if one runs long.

For each shape (experts, intermediate per rank, hidden, top-k) and token count T, routing is a softmax
top-k of random logits (about T * k / E pairs an expert, as a trained router spreads them), and
`fused_moe` (alignment + both grouped GEMMs + the sum over k) is timed inside a CUDA graph of CALLS
calls, as the engine's decode graphs run it (median replay, per call), once with the shipped config
(`moe_config`) and once with each candidate. Candidates: tiles whose stages fit the shared-memory
budget, BLOCK_M no taller than four times the pairs an expert gets (rounded up to 16: taller tiles
only multiply padding rows).

One `moe_tune` row per shape to results.jsonl with --results-dir: each T's shipped and best time and the
best config. It also prints the `_CONFIGS` entry that the best configs make (consecutive token counts
with the same best share a bound); paste it under this card's name into ops/triton_moe.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime

import torch

from benchmarks.graph_timing import graph_call_us
from engine_service.ops import triton_moe as tm
from engine_service.ops.triton_moe import MoeConfig
from pagoda.bench.results import git_commit, record_result

SHAPES = {  # name: (experts, intermediate per rank, hidden, top-k), each the engine's key in _CONFIGS
    "qwen3-30b-a3b": (128, 768, 2048, 8),  # Qwen3-30B-A3B, TP 1
    "qwen3-30b-a3b-tp2": (128, 384, 2048, 8),
    "mixtral-8x7b": (8, 14336, 4096, 2),  # Mixtral-8x7B, TP 1
    "mixtral-8x7b-tp2": (8, 7168, 4096, 2),
}
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CALLS = 20  # fused_moe calls per graph (a decode step runs one per layer)
SMEM_BUDGET = 200 << 10  # of the 227 KiB a block may use on sm_90


def candidates(num_tokens: int, num_experts: int, top_k: int) -> list[MoeConfig]:
    """Launch shapes worth timing at this token count (see the module doc): short tiles stream weights
    (decode: narrow N for more programs, long K steps, deep pipelines, 4 warps), tall ones compute
    (prefill: wide N, 4 or 8 warps)."""
    pairs_per_expert = max(1, num_tokens * top_k // num_experts)
    tallest = max(16, 1 << (4 * pairs_per_expert - 1).bit_length())
    out = []
    for block_m in (16, 32, 64, 128):
        if block_m > tallest:
            continue
        streaming = block_m <= 32
        group_m = 1 if block_m * 4 > pairs_per_expert else 8
        for block_n in (32, 64, 128) if streaming else (64, 128, 256):
            for block_k in (64, 128, 256) if streaming else (64, 128):
                # the gated GEMM loads an A tile and two B tiles (gate, up) per stage, 2 bytes a value
                stage_bytes = (block_m + 2 * block_n) * block_k * 2
                for stages in (2, 3, 4, 5) if streaming else (3, 4):
                    if stages * stage_bytes > SMEM_BUDGET:
                        continue
                    for warps in (4,) if streaming else (4, 8):
                        out.append(MoeConfig(block_m, block_n, block_k, group_m, warps, stages))
    return out


def config_table(best: list[tuple[int, MoeConfig]]) -> list[tuple[int, MoeConfig]]:
    """(token count, its best config), ascending, as a `_CONFIGS` table: each run of token counts with
    the same config keeps the largest as its bound, and the last config serves every larger count."""
    table: list[tuple[int, MoeConfig]] = []
    for num_tokens, config in best:
        if table and table[-1][1] == config:
            table[-1] = (num_tokens, config)
        else:
            table.append((num_tokens, config))
    if table:
        table[-1] = (1 << 62, table[-1][1])
    return table


def table_source(key: tuple[str, int, int, int], table: list[tuple[int, MoeConfig]]) -> str:
    """The `_CONFIGS` entry of `table` as Python source."""
    lines = [f"    {key!r}: ["]
    for bound, c in table:
        bound_text = "1 << 62" if bound == 1 << 62 else str(bound)
        lines.append(
            f"        ({bound_text}, MoeConfig({c.block_m}, {c.block_n}, {c.block_k}, {c.group_m}, "
            f"{c.num_warps}, {c.num_stages})),"
        )
    lines.append("    ],")
    return "\n".join(lines)


def time_us(x, w13, w2, weights, ids, config: MoeConfig | None) -> float:
    tm.fused_moe(x, w13, w2, weights, ids, config)  # compile outside the capture
    return graph_call_us(lambda i: tm.fused_moe(x, w13, w2, weights, ids, config), CALLS, reps=5)


def tune_shape(name: str, tokens: tuple[int, ...]) -> dict:
    num_experts, inter, hidden, top_k = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(num_experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    w2 = torch.randn(num_experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=gen)
    w13 *= 0.02
    w2 *= 0.02
    rows, best_per_t = [], []
    for t in tokens:
        x = torch.randn(t, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
        logits = torch.randn(t, num_experts, device="cuda", dtype=torch.float32, generator=gen)
        weights, ids = tm.moe_topk(logits, top_k, True)
        shipped = tm.moe_config(t, num_experts, inter, hidden, x.device)
        shipped_us = time_us(x, w13, w2, weights, ids, shipped)
        best = (shipped_us, shipped)
        for c in candidates(t, num_experts, top_k):
            try:
                us = time_us(x, w13, w2, weights, ids, c)
            except Exception as exc:  # a config past the card's resources: skip it, say so
                print(f"  skip {c}: {type(exc).__name__}", file=sys.stderr)
                continue
            if us < best[0]:
                best = (us, c)
        us, c = best
        best_per_t.append((t, c))
        rows.append(
            dict(
                tokens=t,
                shipped_us=round(shipped_us, 2),
                shipped_config=dataclasses.asdict(shipped),
                best_us=round(us, 2),
                best_config=dataclasses.asdict(c),
            )
        )
        print(
            f"{name:18s} T={t:5d}  shipped {shipped_us:8.1f} us  best {us:8.1f} us "
            f"({shipped_us / us:4.2f}x)  {c}",
            flush=True,
        )
    del w13, w2
    torch.cuda.empty_cache()
    return dict(
        shape=name,
        experts=num_experts,
        intermediate=inter,
        hidden=hidden,
        top_k=top_k,
        calls_per_graph=CALLS,
        rows=rows,
        table=[(bound, dataclasses.asdict(c)) for bound, c in config_table(best_per_t)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results-dir", help="append one row per shape to DIR/results.jsonl")
    parser.add_argument("--shapes", nargs="*", default=None, help=f"only these (of {', '.join(SHAPES)})")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts, comma-separated")
    parser.add_argument("--commit", default=None, help="recorded in each row (default: git rev-parse HEAD)")
    args = parser.parse_args(argv)
    names = args.shapes or list(SHAPES)
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown} (known: {', '.join(SHAPES)})")
    tokens = tuple(sorted({int(t) for t in args.tokens.split(",") if t.strip()}))
    if not tokens or tokens[0] < 1:
        parser.error("--tokens needs positive token counts")
    if not torch.cuda.is_available():
        print(
            "benchmarks.tune_moe needs a CUDA GPU (it times CUDA graphs); none is visible here",
            file=sys.stderr,
        )
        return 2
    t0 = time.time()
    card = torch.cuda.get_device_name(0)
    commit = args.commit or git_commit()
    entries = []
    for name in names:
        record = {
            "kind": "moe_tune",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "card": card,
            "commit": commit,
            **tune_shape(name, tokens),
        }
        if args.results_dir:
            record_result(record, args.results_dir)
        num_experts, inter, hidden, _ = SHAPES[name]
        table = [(bound, MoeConfig(**c)) for bound, c in record["table"]]
        short_card = "H200" if "H200" in card else "H100" if "H100" in card else card
        entries.append(table_source((short_card, num_experts, inter, hidden), table))
    print("\n# ops/triton_moe.py _CONFIGS entries measured on", card)
    print("\n".join(entries))
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
