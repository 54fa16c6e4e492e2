"""The suite's counted figures: one `reliability` row per scenario in benchmarks/results.jsonl (through
pagoda.bench.results.record_result), written only when pytest runs with `--record-results`; the
Reliability table of benchmarks/RESULTS.md is built from them (`python -m benchmarks.results`)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from reliability_client import Tally

from pagoda.bench.results import git_commit, record_result

REPO = Path(__file__).resolve().parents[2]


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores"


def record(tallies: list[Tally], mode: str, results_dir: Path = REPO / "benchmarks") -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    commit = git_commit(REPO)
    for t in tallies:
        c = t.counts
        row = {
            "kind": "reliability",
            "date": now,
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
        record_result(row, results_dir)
