"""The router's rows in benchmarks/RESULTS.md (one table for both router benchmarks) and results.jsonl."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- router-results:begin -->", "<!-- router-results:end -->"
COLUMNS = [
    "date",
    "machine",
    "commit",
    "setup",
    "streams",
    "tok/s via router",
    "reference tok/s",
    "ratio",
    "TTFT p50 ms",
    "TTFT added ms",
]
TABLE = f"""{BEGIN}
## Through the router (`benchmarks/router_overhead.py`, `benchmarks/router_full_stack.py`)

**tok/s via router**: generated tokens per second of `streams` concurrent streaming `/v1/completions`
requests (token-id prompts) through one `pagoda router` process, counted from the server's usage.
Overhead rows: a fake engine that streams canned tokens as fast as gRPC lets it; **TTFT p50** is the
median time to first token of sequential requests through the router, **TTFT added** its difference with
the same requests sent straight to the engine over gRPC. Full-stack rows: router + engine on one GPU
(random weights, EOS ignored); **reference** is the offline `LLM.generate` of the same workload in the
same call, **ratio** = via router / offline, and **TTFT p50** is under the full load.

| {" | ".join(COLUMNS)} |
|{"---|" * len(COLUMNS)}
{END}
"""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def fmt(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def record(entry: dict, row: list[str], results_dir: Path) -> None:
    """One line to results.jsonl; one row to the router table of RESULTS.md. The table goes before the
    gRPC and offline tables, since `pagoda bench throughput` appends its rows at the end of the file."""
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    path = results_dir / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    if END not in text:
        grpc_section, offline_head = text.find("<!-- grpc-results:begin -->"), text.find("\n| date | card |")
        at = grpc_section if grpc_section >= 0 else offline_head + 1 if offline_head >= 0 else len(text)
        text = text[:at] + TABLE + "\n" + text[at:]
    end = text.index(END)
    path.write_text(text[:end] + "| " + " | ".join(row) + " |\n" + text[end:])
