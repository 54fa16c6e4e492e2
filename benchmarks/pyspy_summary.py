"""Summarize a `py-spy record --format raw --subprocesses` profile: per process, where its samples went.

    py-spy record --subprocesses --nonblocking --format raw -o prof.txt -- pagoda bench grpc ...
    python benchmarks/pyspy_summary.py prof.txt [--top 40] [--match engine_service]

For each process whose samples pass --match (a substring of the stack), the share of its samples in each
function (inclusive: the function or anything it called) and the functions that were on top of the stack
(self). Idle threads are not sampled unless py-spy ran with --idle.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]+?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    return f"{m['func']} ({m['file'].rsplit('/', 1)[-1]})" if m else frame.strip()[:100]


def summarize(lines, match: str | None, top: int) -> str:
    per_process: dict[str, tuple[collections.Counter, collections.Counter, list[int]]] = {}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit() or (match and match not in stack):
            continue
        frames = stack.split(";")
        process = next((f for f in reversed(frames) if f.startswith("process ")), frames[0])[:120]
        incl, self_, total = per_process.setdefault(
            process, (collections.Counter(), collections.Counter(), [0])
        )
        n = int(count)
        total[0] += n
        code = [frame_name(f) for f in frames if not f.startswith(("process ", "thread "))]
        for name in set(code):
            incl[name] += n
        if code:
            self_[code[-1]] += n
    out = []
    for process, (incl, self_, total) in sorted(per_process.items(), key=lambda kv: -kv[1][2][0]):
        out.append(f"\n== {process}\n   {total[0]} samples")
        out.append("   inclusive:")
        out += [f"   {100 * n / total[0]:5.1f}%  {name}" for name, n in incl.most_common(top)]
        out.append("   self:")
        out += [f"   {100 * n / total[0]:5.1f}%  {name}" for name, n in self_.most_common(top // 2)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--match", default=None, help="only stacks containing this text")
    args = p.parse_args(argv)
    with open(args.profile) as f:
        print(summarize(f, args.match, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
