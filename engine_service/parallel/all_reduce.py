"""The tensor-parallel sum: a one-shot all-reduce over symmetric memory for small tensors, NCCL otherwise.

A decode step of a TP model does two all-reduces a layer (after attention's and the MLP's row-parallel
projections), each of a few kilobytes at small batches. NCCL's ring spends ~15-20 µs on such a message,
most of it latency: 64 of them are a quarter of an 8B model's batch-1 step on two GPUs. A one-shot
all-reduce over symmetric memory (PyTorch's `symm_mem` ops: every rank's buffer is mapped into every
other rank's address space over NVLink) takes one kernel: each rank copies its input into its buffer,
the ranks meet at a barrier of signal flags, and each reads and sums every rank's buffer. It needs no
NVLink multicast (which stays off: see distributed.py). Larger tensors (prefill) go to NCCL, whose
bandwidth wins there.

Opt-in (`--custom-all-reduce`): on 2x H200 it took 6.6 µs against NCCL's 17 µs alone
(benchmarks/all_reduce.py), but in the llama-8b TP=2 decode graph it saved only 0.09 ms of 3.5 ms, and
end-to-end throughput was 11-14 % lower than with NCCL in two runs and 18 % higher in a third (RESULTS.md,
tensor parallelism): no clear win, so NCCL stays the default.

    install(device, dtype, max_bytes)   once per rank, after the process group is up (CUDA only)
    out = all_reduce(tensor)            in the layers: the summed tensor (a new one, or `tensor` itself)
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 20  # one-shot up to here: a decode batch of 128 at hidden 4096 in bf16


class SymmMemAllReduce:
    """One-shot all-reduce of tensors up to `max_bytes`, through one symmetric buffer per rank."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_bytes: int):
        import torch.distributed._symmetric_memory as symm_mem

        self.dtype = dtype
        self.group_name = dist.group.WORLD.group_name
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)

    def fits(self, tensor: torch.Tensor) -> bool:
        return tensor.dtype == self.dtype and tensor.numel() <= self.buffer.numel() and tensor.is_contiguous()

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        n = tensor.numel()
        out = torch.empty_like(tensor)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(
            self.buffer[:n], tensor.view(-1), "sum", self.group_name, out.view(-1)
        )
        return out


_one_shot: SymmMemAllReduce | None = None


def install(
    device: torch.device, dtype: torch.dtype, max_bytes: int = DEFAULT_MAX_BYTES
) -> SymmMemAllReduce | None:
    """Sets up the one-shot path on this rank; every rank must call it (the buffers meet). None, with a
    warning, where symmetric memory is not available: NCCL then does every all-reduce."""
    global _one_shot
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float32) or max_bytes <= 0:
        return None
    try:
        _one_shot = SymmMemAllReduce(device, dtype, max_bytes)
    except (RuntimeError, ImportError, AttributeError) as e:
        log.warning("one-shot all-reduce unavailable (%s): NCCL does every all-reduce", e)
        return None
    log.info("one-shot all-reduce over symmetric memory for tensors up to %d KiB", max_bytes >> 10)
    return _one_shot


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the tensor-parallel ranks."""
    if _one_shot is not None and _one_shot.fits(tensor):
        return _one_shot(tensor)
    dist.all_reduce(tensor)
    return tensor
