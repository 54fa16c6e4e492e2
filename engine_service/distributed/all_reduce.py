"""The tensor-parallel sum: a one-shot all-reduce over symmetric memory for small tensors, NCCL otherwise.

A decode step of a TP model does two all-reduces a layer (after attention's and the MLP's row-parallel
projections), each of a few kilobytes at small batches. NCCL's ring spends ~15-20 µs on such a message,
most of it latency: 64 of them are a quarter of an 8B model's batch-1 step on two GPUs. A one-shot
all-reduce over symmetric memory (PyTorch's `symm_mem` ops: every rank's buffer is mapped into every
other rank's address space over NVLink) takes one kernel: each rank copies its input into its buffer,
the ranks meet at a barrier of signal flags, and each reads and sums every rank's buffer. It needs no
NVLink multicast (which stays off: see distributed.py). Larger tensors (prefill) go to NCCL, whose
bandwidth wins there.

Alone, on 2x H200, it took 6.6 µs against NCCL's 17 µs (benchmarks/all_reduce.py), but in the llama-8b
TP=2 decode graph it saved only 0.09 ms of 3.5 ms, and end-to-end throughput was lower than with NCCL in
two of three runs (benchmarks/RESULTS.md, offline throughput): the fusion below is what made it pay.

The same path fuses each row-parallel layer's all-reduce with the residual add and RMSNorm that follow
it (ops/triton_all_reduce_norm.py: one kernel where there were two, 64 fewer launches per llama-8b
decode step): the layers hand their partial sums to `all_reduce_add_rms_norm`, which falls back to
NCCL + the separate norm where the fused kernel does not apply (CPU, prefill-sized tensors, not installed).
Its exchange pushes tagged words and never waits on a flag: on 2x H200 at one row 3.1-3.3 µs against
8.0 (one-shot + norm) and 8.0 (NCCL + norm), and 5.1-5.6 µs for the flag handshake it replaced; llama-8b
TP=2 batch-1 step 2.82-2.84 ms against NCCL's 3.35-3.46, throughput 1.00-1.15x NCCL's in two calls
(docs/PERFORMANCE.md, tensor parallelism). On by default (`--no-custom-all-reduce` turns it off) where
every GPU reaches its peers.

    install(device, dtype, hidden_size, max_bytes)   once per rank, after the process group is up (CUDA)
    out = all_reduce(tensor)            in the layers: the summed tensor (a new one, or `tensor` itself)
    normed, residual = all_reduce_add_rms_norm(partial, residual, weight, eps)
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from engine_service.ops import dispatch as ops

log = logging.getLogger(__name__)

# One-shot up to here: a decode batch of 512 at hidden 4096 in bf16 (21 µs against NCCL's 37 at 256 rows
# on 2x H200); the fused add + norm takes 256 rows (two halves, each with a slot per rank of 64-bit words
# that carry 32 bits of data: its buffer is 2 x world_size times this size).
DEFAULT_MAX_BYTES = 4 << 20


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


class SymmMemAddRMSNorm:
    """All-reduce + residual add + RMSNorm of up to `rows` rows of `hidden_size` in one kernel, through one
    symmetric buffer per rank: two halves, each a slot per sending rank for every row, of tagged 64-bit
    words (see triton_all_reduce_norm)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, hidden_size: int, max_bytes: int):
        import torch.distributed._symmetric_memory as symm_mem

        from engine_service.ops.triton_all_reduce_norm import words_per_row

        self.dtype, self.hidden_size = dtype, hidden_size
        self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self.rows = max(1, max_bytes // (2 * hidden_size * dtype.itemsize))
        words = 2 * self.rows * self.world_size * words_per_row(hidden_size, dtype)
        self.buffer = symm_mem.empty(words, dtype=torch.int64, device=device).zero_()  # tag 0: no call's
        handle = symm_mem.rendezvous(self.buffer, dist.group.WORLD.group_name)
        torch.cuda.synchronize(device)
        dist.barrier()  # every rank's buffer is zero before any peer pushes into it
        self.buffer_ptrs = torch.tensor(handle.buffer_ptrs, dtype=torch.int64, device=device)
        self.counters = torch.zeros(self.rows, dtype=torch.int64, device=device)

    def fits(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        return (
            x.dtype == self.dtype == residual.dtype
            and x.dim() == 2
            and x.shape == residual.shape
            and x.shape[1] == self.hidden_size
            and 0 < x.shape[0] <= self.rows
            and x.is_contiguous()
            and residual.is_contiguous()
        )

    def __call__(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from engine_service.ops.triton_all_reduce_norm import all_reduce_add_rms_norm

        return all_reduce_add_rms_norm(
            x,
            residual,
            weight,
            eps,
            self.buffer_ptrs,
            self.counters,
            self.rank,
            self.world_size,
        )


_one_shot: SymmMemAllReduce | None = None
_fused_norm: SymmMemAddRMSNorm | None = None


def install(
    device: torch.device, dtype: torch.dtype, hidden_size: int = 0, max_bytes: int = DEFAULT_MAX_BYTES
) -> SymmMemAllReduce | None:
    """Sets up the one-shot path on this rank, and with `hidden_size` the fused all-reduce + add + norm;
    every rank must call it (the buffers meet). None, with a warning, where symmetric memory is not
    available: NCCL then does every all-reduce."""
    global _one_shot, _fused_norm
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float32) or max_bytes <= 0:
        return None
    if not _every_rank_reaches_its_peers(device):
        log.warning("some GPUs cannot access each other's memory (no P2P): NCCL does every all-reduce")
        return None
    try:
        _one_shot = SymmMemAllReduce(device, dtype, max_bytes)
        if hidden_size and hidden_size * dtype.itemsize % 16 == 0:  # the kernel moves 16-byte vectors
            _fused_norm = SymmMemAddRMSNorm(device, dtype, hidden_size, max_bytes)
    except (RuntimeError, ImportError, AttributeError) as e:
        log.warning("one-shot all-reduce unavailable (%s): NCCL does every all-reduce", e)
        _one_shot = _fused_norm = None
        return None
    log.info(
        "one-shot all-reduce over symmetric memory for tensors up to %d KiB%s",
        max_bytes >> 10,
        f", fused with add + RMSNorm up to {_fused_norm.rows} rows" if _fused_norm else "",
    )
    return _one_shot


def _every_rank_reaches_its_peers(device: torch.device) -> bool:
    """Whether every rank's GPU (rank r on cuda:r) can map every other's memory (NVLink or PCIe P2P),
    agreed by all ranks so that they all take the same path (the symmetric buffers are set up together)."""
    world = dist.get_world_size()
    peers = [torch.cuda.can_device_access_peer(device.index, i) for i in range(world) if i != device.index]
    ok = torch.tensor([int(all(peers))], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the tensor-parallel ranks."""
    if _one_shot is not None and _one_shot.fits(tensor):
        return _one_shot(tensor)
    dist.all_reduce(tensor)
    return tensor


def all_reduce_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` is a row-parallel layer's partial sum on this rank: returns (rms_norm(h) * weight, h) with
    h = sum of x over the ranks + residual. Use the returned pair (`residual` may be updated in place)."""
    if _fused_norm is not None and _fused_norm.fits(x, residual):
        return _fused_norm(x, residual, weight, eps)
    return ops.fused_add_rms_norm(all_reduce(x), residual, weight, eps)
