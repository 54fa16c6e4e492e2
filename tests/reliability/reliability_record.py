"""The suite's counted figures: one row per scenario in the Reliability section of benchmarks/RESULTS.md and
one line in benchmarks/results.jsonl, written only when pytest runs with `--record-results`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

from reliability_client import Tally

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- reliability-results:begin -->", "<!-- reliability-results:end -->"
COLUMNS = [
    "date",
    "machine",
    "commit",
    "mode",
    "scenario",
    "sent",
    "ok",
    "proper errors",
    "hung",
    "lost",
    "figures",
]
SECTION = f"""{BEGIN}
## Reliability (`tests/reliability`, `pytest tests/reliability --record-results [--heavy]`)

Real processes on loopback: a tokenizer service, two CPU engines with a tiny random Llama, and a router.
Every request a scenario sends ends as exactly one of: **ok** (a complete answer: every choice finished,
then `[DONE]`), **proper errors** (a 4xx/503 in OpenAI's error format, a 429 with Retry-After, or a stream
that ends with an OpenAI error event), **hung** (no end within the client's deadline) or **lost** (a 500,
a malformed body, a stream cut without an error event). **figures** are the scenario's measurements
(memory and descriptors of router and engines, detection and recovery times). **mode**: `cpu` is what CI
runs; `heavy` is the larger run for the GPU machine (`--heavy`).

| {" | ".join(COLUMNS)} |
|{"---|" * len(COLUMNS)}
{END}
"""


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def row(tally: Tally, mode: str, commit: str, date: str) -> list[str]:
    c = tally.counts
    left = {"left on purpose": c["left"]} if c["left"] else {}
    figures = "; ".join(f"{k} {v}" for k, v in (left | tally.figures).items())
    return [date, machine(), commit[:8], mode, tally.scenario, str(tally.sent), str(c["ok"]), str(c["error"]),
            str(c["hung"]), str(c["lost"]), figures or "–"]  # fmt: skip


def record(tallies: list[Tally], mode: str, results_dir: Path = REPO / "benchmarks") -> None:
    if not tallies:
        return
    now = datetime.datetime.now(datetime.UTC)
    commit, date = git_commit(), now.date().isoformat()
    with open(results_dir / "results.jsonl", "a") as f:
        for t in tallies:
            c = t.counts
            entry = {
                "kind": "reliability",
                "date": now.isoformat(timespec="seconds"),
                "machine": machine(),
                "commit": commit,
                "mode": mode,
                "scenario": t.scenario,
                "sent": t.sent,
                "ok": c["ok"],
                "proper_errors": c["error"],
                "hung": c["hung"],
                "lost": c["lost"],
                "left_on_purpose": c["left"],
                "figures": t.figures,
            }
            f.write(json.dumps(entry, default=str) + "\n")
    path = results_dir / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    if END not in text:
        # Before the other sections: `pagoda bench throughput` appends its rows at the end of the file.
        marks = [text.find(m) for m in ("<!-- router-results:begin -->", "<!-- grpc-results:begin -->")]
        at = next((i for i in marks if i >= 0), len(text))
        text = text[:at] + SECTION + "\n" + text[at:]
    end = text.index(END)
    rows = "".join("| " + " | ".join(row(t, mode, commit, date)) + " |\n" for t in tallies)
    path.write_text(text[:end] + rows + text[end:])
