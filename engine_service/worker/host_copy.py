"""Host-to-device copies of a step's inputs that never make the host wait for the device.

`torch.tensor(values, device="cuda")` copies from pageable memory and then synchronizes the stream: the
host waits until every kernel queued before the copy has run. In the step loop that ends the overlap of
async scheduling (the host prepares step n+1 while the device runs step n). Here the values are laid out
in one pinned buffer and sent in one copy with non_blocking=True; PyTorch's pinned-memory allocator keeps
the buffer from being reused until that copy has run, so every call may take a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pinned(numel: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """A host buffer to fill through its numpy view: pinned when it is bound for a GPU."""
    host = torch.empty(numel, dtype=dtype, pin_memory=device.type == "cuda")
    return host, host.numpy()


def int64_parts(parts: Sequence[Sequence[int] | np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Every part in one copy; returns the parts' int64 views on the device, in order."""
    sizes = [len(p) for p in parts]
    host, array = pinned(sum(sizes), torch.int64, device)
    start = 0
    for part, size in zip(parts, sizes, strict=True):
        array[start : start + size] = part
        start += size
    return list(host.to(device, non_blocking=True).split(sizes))


def float32(values: Sequence[float], device: torch.device) -> torch.Tensor:
    host, array = pinned(len(values), torch.float32, device)
    array[:] = values
    return host.to(device, non_blocking=True)
