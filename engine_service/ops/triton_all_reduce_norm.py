"""All-reduce + residual add + RMSNorm in one kernel, over symmetric memory (Triton).

In a tensor-parallel decode step every row-parallel projection (attention's o_proj, the MLP's down_proj) is
followed by an all-reduce and then the residual add + RMSNorm of the next sub-layer: two kernels, and at
batch 1 both are pure latency. Here one program per row does all of it:

    publish   write this rank's partial row into its half of the symmetric buffer
    barrier   signal every peer "row ready" (flag 0 -> 1 in the peer's signal pad, release) and wait
              for every peer's signal in ours (flag 1 -> 0, acquire); the flags reset themselves, so a
              sender whose previous signal was not consumed yet spins until it is
    reduce    sum every rank's row in rank order (fp32; the same order on every rank, so the ranks'
              residual streams stay bit-identical), round to the model dtype as an all-reduce would
    norm      residual <- sum + residual (rounded), out <- rms_norm(residual) * weight

Each row alternates between two halves of the buffer (a per-row counter in local memory picks the half): a
rank may only overwrite a half after passing the next call's barrier, by which time every peer has finished
reading it. Programs wait only for the same row on other GPUs, never for programs on their own GPU, so
they cannot deadlock on residency. A peer that dies leaves the others spinning; the executor kills them.

Pointers arrive as int64 device arrays (every rank's buffer and signal pad, from the symmetric-memory
rendezvous) and are cast in the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _all_reduce_add_rms_norm_kernel(
    out_ptr,  # [T, H] normed output
    x_ptr,  # [T, H] this rank's partial sums
    residual_ptr,  # [T, H] read, then overwritten with the reduced sum + residual
    weight_ptr,  # [H]
    buffer_ptrs,  # int64 [WORLD]: each rank's symmetric buffer, [2, ROWS, H] elements of x's dtype
    signal_ptrs,  # int64 [WORLD]: each rank's signal pad (int32 flags, [ROWS, WORLD] used)
    counters_ptr,  # int32 [ROWS], local: how many calls each row has made (picks the buffer half)
    eps,
    rank,
    ROWS: tl.constexpr,
    WORLD: tl.constexpr,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    dtype = x_ptr.dtype.element_ty
    count = tl.load(counters_ptr + row)
    slot = ((count % 2) * ROWS + row).to(tl.int64) * HIDDEN  # this call's row in every rank's buffer

    # Every buffer starts 16-byte aligned and rows are HIDDEN long (a multiple of 8 for the models served),
    # which lets the row be read and written in 16-byte vectors.
    own = tl.multiple_of(tl.load(buffer_ptrs + rank).to(tl.pointer_type(dtype)), 16)
    tl.store(own + slot + offs, tl.load(x_ptr + row * HIDDEN + offs, mask=mask), mask=mask)
    tl.debug_barrier()  # every thread's part of the row is written before the signal goes out
    own_pad = tl.load(signal_ptrs + rank).to(tl.pointer_type(tl.int32))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            peer_pad = tl.load(signal_ptrs + peer).to(tl.pointer_type(tl.int32))
            flag = peer_pad + row * WORLD + rank
            while tl.atomic_cas(flag, 0, 1, sem="release", scope="sys") != 0:
                pass
    for peer in tl.static_range(WORLD):
        if peer != rank:
            flag = own_pad + row * WORLD + peer
            while tl.atomic_cas(flag, 1, 0, sem="acquire", scope="sys") != 1:
                pass
    tl.debug_barrier()  # no thread reads a peer's row before the signals are in

    total = tl.zeros([BLOCK], dtype=tl.float32)
    for peer in tl.static_range(WORLD):
        buffer = tl.multiple_of(tl.load(buffer_ptrs + peer).to(tl.pointer_type(dtype)), 16)
        total += tl.load(buffer + slot + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    reduced = total.to(dtype)  # what the all-reduce would have returned
    r = tl.load(residual_ptr + row * HIDDEN + offs, mask=mask, other=0.0)
    h = (reduced.to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(residual_ptr + row * HIDDEN + offs, h, mask=mask)
    h = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / HIDDEN + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + offs, (h * rstd * w).to(dtype), mask=mask)
    tl.store(counters_ptr + row, count + 1)


def all_reduce_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    buffer_ptrs: torch.Tensor,
    signal_ptrs: torch.Tensor,
    counters: torch.Tensor,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [T, H] partial sums, contiguous; residual: [T, H], updated in place. Returns (normed, residual).
    The caller checks the fit: T <= counters.numel() rows, each rank's buffer holds [2, rows, H]."""
    T, hidden = x.shape
    out = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _all_reduce_add_rms_norm_kernel[(T,)](
        out,
        x,
        residual,
        weight,
        buffer_ptrs,
        signal_ptrs,
        counters,
        eps,
        rank,
        ROWS=counters.numel(),
        WORLD=world_size,
        HIDDEN=hidden,
        BLOCK=block,
        num_warps=min(16, max(1, block // 512)),
    )
    return out, residual
