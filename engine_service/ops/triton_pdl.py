"""Programmatic dependent launch (PDL) for the Triton kernels, on Hopper (sm_90) and newer.

A decode step replays a few hundred small kernels from one CUDA graph, back to back, and at every boundary
the GPU idles while the next kernel is launched and its programs are placed. Launched with PDL, a kernel
may start while the one before it still runs: its programs are placed early and stop in `wait_for_previous`
(`griddepcontrol.wait`) until that kernel has finished and its writes are visible; once all of them are
past that point, the next kernel may launch in turn.

Every kernel launched this way calls `wait_for_previous` before its first load or store of memory that
another kernel reads or writes, so the stream's order holds as before: when a kernel passes its wait, the
one before it has finished, and that one had passed its own wait, so everything earlier has finished too.
Only the launches overlap.

Kernels take `PDL: tl.constexpr` and are launched with `**launch_options(tensor)`; `set_enabled(False)`
turns it off for the process (the engine's `pdl` setting).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


@functools.cache
def _supported(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def use_pdl(t: torch.Tensor) -> bool:
    """Whether kernels on t's device launch with PDL: on, and a CUDA device of sm_90 or newer."""
    if not (_enabled and t.is_cuda):
        return False
    return _supported(t.device.index if t.device.index is not None else torch.cuda.current_device())


def launch_options(t: torch.Tensor) -> dict:
    """The launch keywords of a PDL-aware kernel whose tensors live on t's device."""
    pdl = use_pdl(t)
    return {"PDL": pdl, "launch_pdl": pdl}


@triton.jit
def wait_for_previous():
    """Wait until the kernel before this one has finished (its writes visible), then let the next one
    launch. A no-op in a kernel launched without PDL."""
    tl.extra.cuda.gdc_wait()
    tl.extra.cuda.gdc_launch_dependents()
