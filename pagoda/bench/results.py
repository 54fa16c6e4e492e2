"""Where benchmark figures go: `record_result` appends one JSON object a line to `<dir>/results.jsonl`.

Every measurement is recorded through this one function: `pagoda bench throughput | grpc | serve`, the
development benchmarks (benchmarks/ in a checkout) and the reliability suite. A row says what produced it
(`kind`), when (`date`, UTC), from which code (`commit`) and where (`card` for a GPU, or `machine`); the
rest is the benchmark's own. The file is only ever appended to. In a development checkout,
`python -m benchmarks.results` builds benchmarks/RESULTS.md and docs/PERFORMANCE.md from it.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"


def record_result(row: dict[str, Any], results_dir: str | Path) -> dict[str, Any]:
    """Append `row` to results_dir/results.jsonl (the folder is made if missing) and return it as written:
    `kind`, `date` (now, unless the row has one) and `commit` first, then the row's own fields."""
    missing = [key for key in ("kind", "commit") if not row.get(key)]
    if missing:
        raise ValueError(f"a results row needs {' and '.join(missing)}")
    stamped = {
        "kind": row["kind"],
        "date": row.get("date") or datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": row["commit"],
        **row,
    }
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / RESULTS_FILE, "a") as f:
        f.write(json.dumps(stamped, default=str) + "\n")
    return stamped


def git_commit(cwd: str | Path | None = None) -> str:
    """The checked-out commit (12 hex digits) of the git work tree at `cwd` (default: the current folder),
    or "unknown" outside one: pass --commit where the code is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
