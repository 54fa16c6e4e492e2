"""Per-call time of a kernel inside a CUDA graph, as a decode step under graphs pays it.

`graph_call_us(call, n)` captures call(0), call(1), ..., call(n - 1) in one graph (the caller makes the
i-th call touch its own copy of the data, enough copies to defeat L2), replays it once warm, then `reps`
times, and returns the median replay over n in microseconds. Compile (and allocate workspaces) with one
call before: nothing may compile or allocate inside a capture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def graph_call_us(call: Callable[[int], object], n: int, reps: int = 10) -> float:
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n):
            call(i)
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / n)
    del graph
    return sorted(times)[len(times) // 2]
