"""A child process that dies with its parent: Linux's PR_SET_PDEATHSIG, through prctl.

Helper processes (a supervisor's services, the tokenizer's template workers) must not outlive the process
that started them: an orphaned engine keeps its GPU and its port, an orphaned template worker its CPU.
The kernel sends the signal when the parent thread that forked the child exits, however it exits
(SIGKILL included). Elsewhere than Linux it is a no-op (the callers also watch a pipe to the parent).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> bool:
    """Asks the kernel to send `sig` to this process when its parent exits; True if it could. With
    `parent_pid`, exits at once if the parent already died before the request (the race prctl leaves)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True
