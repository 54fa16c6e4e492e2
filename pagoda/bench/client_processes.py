"""A load generator dealt out over several processes: one Python process reading every streamed message can
fall behind a fast server, and then the benchmark measures its client.

    elapsed, parts = run(worker, shares)   # worker(k, *shares[k], ready, results) in process k
    merged = merge(parts, len(requests))   # back in request order (request i went to share i % n)

Each worker sets itself up (imports, connections), waits on `ready` (a Barrier of every worker and this
process), sends its share, and puts `(k, (time.monotonic() at its end, its results))` on `results`.
`elapsed` runs from the barrier to the last worker's end (time.monotonic() is system-wide on Linux).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any


def deal(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    """Item i to share i % n."""
    return [items[k::n] for k in range(n)]


def merge(parts: list[list[Any]], total: int) -> list[Any]:
    """The inverse of `deal`: the shares' results back in item order."""
    out: list[Any] = [None] * total
    for k, part in enumerate(parts):
        out[k :: len(parts)] = part
    return out


def run(worker: Callable[..., None], shares: list[tuple], timeout_s: float) -> tuple[float, list[list[Any]]]:
    """Runs worker(k, *shares[k], ready, results) in one spawned process per share; see the module doc."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Barrier(len(shares) + 1), ctx.Queue()
    workers = [
        ctx.Process(target=worker, args=(k, *share, ready, results), daemon=True)
        for k, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    try:
        ready.wait(timeout=120)  # every worker is set up: all start now
        t0 = time.monotonic()
        parts: dict[int, tuple[float, Any]] = {}
        while len(parts) < len(workers):
            try:
                k, part = results.get(timeout=1.0)
                parts[k] = part
            except queue.Empty:
                dead = [k for k, w in enumerate(workers) if k not in parts and w.exitcode not in (None, 0)]
                if dead or time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(
                        f"client processes {dead} died"
                        if dead
                        else f"clients still running after {timeout_s} s"
                    ) from None
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    end = max([t0] + [finished for finished, _ in parts.values()])
    return end - t0, [parts[k][1] for k in range(len(shares))]
