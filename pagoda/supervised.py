"""`python -m pagoda.supervised PARENT_PID COMMAND ARGS...`: a `pagoda COMMAND` that dies with its parent.

`pagoda serve` starts each service through this: the kernel sends the service SIGTERM when the supervisor
exits, however it exits (SIGKILL included), so that no orphan keeps serving on its port; SIGTERM lets the
service stop as it always does (the router at once, engines after draining).
"""

from __future__ import annotations

import signal
import sys

from pagoda.parent_death import die_with_parent


def main(argv: list[str]) -> int:
    parent_pid, command = int(argv[0]), argv[1:]
    die_with_parent(signal.SIGTERM, parent_pid)
    from pagoda.cli import main as pagoda_main

    return pagoda_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
