"""Benchmark figures and where they are written: one JSON object per configuration to results.jsonl and one
table row to RESULTS.md. Pure Python (the peer workers import it next to other engines' packages)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS_HEADER = """# Throughput results

One row per configuration, appended by `pagoda bench throughput` (the full figures are one JSON object a line
in `results.jsonl`). Random bf16 weights (`load_format="dummy"`), token-id prompts, EOS ignored,
temperature 1.0; every engine on the same card in the same call, one after another.

Workloads (`pagoda/bench/workloads.py`): **fixed** N prompts × 512 tokens → 256; **random** input uniform in
256–768, output in 128–384; **shared-prefix** the same 1,024 tokens + 512 of each prompt's own → 256, with
prefix caching on and off. Shapes: llama-1b (Llama-3.2-1B), qwen-0.5b (Qwen2.5-0.5B), llama-8b (Llama-3.1-8B).

- **out tok/s**, **total tok/s**: generated tokens, and prompt + generated tokens, per second of the timed
  `generate` call (start-up and warm-up excluded).
- **eff**: efficiency = the roofline floor's time / the measured time. The floor is
  max(FLOPs / matrix rate, bytes / copy bandwidth) for the same work (weights read once per step, steps
  bounded below by the batch limits, plus KV read), with both ceilings measured on the card in the same run
  (`pagoda/bench/roofline.py`).
- **TTFT p50**, **TPOT p50**: per-request time to first token (queueing included: all requests arrive at
  once) and time per output token after the first, in ms.
- **bs1 ms**, **bs256 ms**: one decode step at batch 1 and batch 256 (difference of two runs that differ only
  in tokens generated), against the floor (all weights plus the batch's KV read once at the copy bandwidth,
  or its FLOPs at the matrix rate, whichever is slower).
- **start-up s**: engine construction (model build + CUDA-graph capture), before warm-up.
- **vLLM**, **HF static**, **HF CB**: the peers' generated tok/s (efficiency) on the same workload:
  vLLM 0.26.0, transformers' static batched `generate` (batches of 64) and its continuous batching
  (`generate_batch`); the HF peers may run the first 256 prompts only (`peer.*.num_prompts` in results.jsonl).

"""
COLUMNS = [
    "date",
    "card",
    "commit",
    "shape",
    "workload",
    "out tok/s",
    "total tok/s",
    "eff",
    "TTFT p50",
    "TPOT p50",
    "bs1 ms (floor)",
    "bs256 ms (floor)",
    "start-up s",
    "vLLM",
    "HF static",
    "HF CB",
]
TABLE_HEAD = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"


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


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _peer_cell(peer: dict[str, Any] | None) -> str:
    if peer is None:
        return "–"
    if "error" in peer:
        return "error"
    eff = peer.get("efficiency")
    return _fmt(peer["out_tok_s"]) + (f" ({eff:.2f})" if eff is not None else "")


def settings_label(settings: dict[str, Any]) -> str:
    """The settings that differ from the usual run, for the shape cell: ", TP=2, max_num_seqs 256"."""
    parts = []
    if settings.get("tensor_parallel_size", 1) > 1:
        tp = f"TP={settings['tensor_parallel_size']}"
        parts.append(tp + (" custom all-reduce" if settings.get("custom_all_reduce") else " NCCL only"))
    if settings.get("pdl") is False:
        parts.append("no PDL")
    if settings.get("max_num_seqs", 512) != 512:
        parts.append(f"max_num_seqs {settings['max_num_seqs']}")
    return "".join(f", {p}" for p in parts)


def markdown_row(record: dict[str, Any]) -> str:
    pagoda = record.get("pagoda") or {}
    peers = record.get("peer", {})

    def step(bs: int) -> str:
        ms, floor = record.get(f"itl_bs{bs}_ms"), record.get(f"itl_bs{bs}_floor_ms")
        return f"{_fmt(ms, 2)} ({_fmt(floor, 2)})"

    cells = [
        record["date"][:10],
        record["card"],
        record["commit"][:8],
        record["shape"] + settings_label(record.get("settings") or {}),
        workload_label(record["workload"], record["prefix_caching"]),
        _fmt(record.get("out_tok_s")),
        _fmt(record.get("total_tok_s")),
        _fmt(record.get("efficiency"), 2),
        _fmt((pagoda.get("ttft_ms") or {}).get("p50"), 1),
        _fmt((pagoda.get("tpot_ms") or {}).get("p50"), 2),
        step(1),
        step(256),
        _fmt(pagoda.get("startup_s"), 1),
        _peer_cell(peers.get("vllm")),
        _peer_cell(peers.get("hf_static")),
        _peer_cell(peers.get("hf_cb")),
    ]
    if "error" in pagoda:
        cells[5] = "error"
    return "| " + " | ".join(cells) + " |"


def append_jsonl(record: dict[str, Any], results_dir: str | Path) -> None:
    """Append the record as one line to results_dir/results.jsonl (the folder made if missing)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def append_results(record: dict[str, Any], results_dir: str | Path) -> None:
    """Append the record to results.jsonl and its row to RESULTS.md (created with its header if missing)."""
    results_dir = Path(results_dir)
    append_jsonl(record, results_dir)
    table = results_dir / "RESULTS.md"
    if not table.exists():
        table.write_text(RESULTS_HEADER + TABLE_HEAD)
    table.write_text(insert_row(table.read_text(), TABLE_HEAD.splitlines()[0], markdown_row(record)))


def insert_row(text: str, head: str, row: str) -> str:
    """`row` after the last row of the table whose header line is `head` (notes after it stay after)."""
    lines = text.split("\n")
    end = lines.index(head) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:end] + [row] + lines[end:])
