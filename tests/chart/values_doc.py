"""The values table of charts/pagoda/README.md, made from the `# --` comments of values.yaml.

Every key of values.yaml is either documented by a `# -- text` comment right above it (continued by
plain `#` lines; the table shows the first paragraph), or is a section whose keys are documented.
A documented key's own keys (resources, tolerations, the models list) are described by its comment.

    python tests/chart/values_doc.py     # prints the table to paste between the README's markers
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

VALUES = Path(__file__).resolve().parents[2] / "charts" / "pagoda" / "values.yaml"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


@dataclass(frozen=True)
class Row:
    key: str
    default: str
    description: str


def parse(text: str) -> tuple[list[Row], list[str]]:
    """(documented keys in file order, problems: keys with no documentation)."""
    data = yaml.safe_load(text)
    rows: list[Row] = []
    problems: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    sections: dict[str, bool] = {}  # section path -> has a documented key below it
    doc: list[str] | None = None
    paragraph_ended = False  # the table keeps a comment's first paragraph; values.yaml keeps all
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc, paragraph_ended = [stripped[4:].strip()], False
            continue
        if stripped.startswith("#"):
            text_part = stripped[1:].strip()
            paragraph_ended = paragraph_ended or not text_part
            if doc is not None and not paragraph_ended:
                doc.append(text_part)
            continue
        if not stripped:
            doc = None
            continue
        match = _KEY.match(line)
        if match is None:  # a list item or a continued value: part of a documented key above
            doc = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(documented for _, _, documented in stack):
            doc = None
            continue
        path = ".".join([k for _, k, _ in stack] + [match["key"]])
        if doc is not None:
            default = _lookup(data, path)
            rows.append(Row(path, json.dumps(default, separators=(", ", ": ")), " ".join(doc)))
            for i in range(len(stack)):
                sections[".".join(k for _, k, _ in stack[: i + 1])] = True
        elif match["rest"].strip() == "":
            sections.setdefault(path, False)
        else:
            problems.append(f"{path}: no `# --` comment above it")
        stack.append((indent, match["key"], doc is not None))
        doc = None
    problems += [f"{path}: a section with no documented key" for path, ok in sections.items() if not ok]
    return rows, problems


def _lookup(data: dict, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def table(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| Key | Default | Description |", "| --- | --- | --- |"]
    lines += [f"| `{r.key}` | `{cell(r.default)}` | {cell(r.description)} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    rows, problems = parse(VALUES.read_text())
    for problem in problems:
        print(f"values.yaml: {problem}", file=sys.stderr)
    print(START)
    print(table(rows))
    print(END)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
