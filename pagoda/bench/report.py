"""One engine's figures on one workload, in the shape every engine (Pagoda and its peers) reports them, and
the workload's label. Pure Python: the peer workers import it next to other engines' packages."""

from __future__ import annotations

import statistics
from typing import Any


def percentiles_ms(seconds: list[float]) -> dict[str, float] | None:
    """p50 / p90 / p99 / mean in milliseconds (nearest-rank percentiles), None for no data."""
    if not seconds:
        return None
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {
        k: round(v * 1e3, 3)
        for k, v in (
            ("p50", rank(0.50)),
            ("p90", rank(0.90)),
            ("p99", rank(0.99)),
            ("mean", statistics.fmean(ordered)),
        )
    }


def engine_result(
    *,
    engine: str,
    startup_s: float | None,
    elapsed_s: float,
    num_prompts: int,
    num_prompt_tokens: int,
    num_output_tokens: int,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    ttft_s: list[float] | None = None,
    tpot_s: list[float] | None = None,
    decode_step_ms: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One engine's figures on one workload, in the shape every engine (Pagoda and peers) reports."""
    return {
        "engine": engine,
        "num_prompts": num_prompts,
        "startup_s": None if startup_s is None else round(startup_s, 2),
        "elapsed_s": round(elapsed_s, 3),
        "num_prompt_tokens": num_prompt_tokens,
        "num_output_tokens": num_output_tokens,
        "out_tok_s": round(num_output_tokens / elapsed_s, 1),
        "total_tok_s": round((num_prompt_tokens + num_output_tokens) / elapsed_s, 1),
        "ttft_ms": percentiles_ms(ttft_s or []),
        "tpot_ms": percentiles_ms(tpot_s or []),
        "decode_step_ms": decode_step_ms or {},
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        **extra,
    }


def workload_label(workload: dict[str, Any], prefix_caching: bool) -> str:
    n, i, o = workload["num_prompts"], workload["input_len"], workload["output_len"]
    name = workload["name"]
    if name == "random":
        r = workload["range_ratio"]
        return f"random {n}×{int(i * (1 - r))}–{int(i * (1 + r))}/{int(o * (1 - r))}–{int(o * (1 + r))}"
    if name == "shared-prefix":
        return (
            f"shared-prefix {n}×({workload['prefix_len']}+{i})/{o} cache {'on' if prefix_caching else 'off'}"
        )
    return f"fixed {n}×{i}/{o}"
