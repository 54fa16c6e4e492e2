"""All-reduce + residual add + RMSNorm in one kernel, over symmetric memory (Triton).

In a tensor-parallel decode step every row-parallel projection (attention's o_proj, the MLP's down_proj) is
followed by an all-reduce and then the residual add + RMSNorm of the next sub-layer: two kernels, and at
batch 1 both are pure latency. Here one program per row does all of it, pushing rather than pulling, so
that the only wait on NVLink is one posted write's way there:

    push      store this rank's partial row into every peer's buffer (this rank's slot of the row there),
              then raise this rank's flag in every peer's flag array to the call's epoch (release)
    wait      poll this rank's own flags (local memory) until every peer's epoch is there (acquire)
    reduce    sum the peers' slots and this rank's own partial in rank order (fp32; the same order on
              every rank, so the ranks' residual streams stay bit-identical), round to the model dtype as
              an all-reduce would
    norm      residual <- sum + residual (rounded), out <- rms_norm(residual) * weight

Epochs: a per-row call counter in local memory (int64: it never wraps) numbers the calls, every rank
counting the same calls. Flags only grow, so none is ever reset, and a peer that has already moved on to
the next call leaves a larger epoch, which passes the wait as well.

Each row alternates between two halves of the buffer (the epoch's parity picks the half). A rank writes a
half for call n only after passing call n-1's wait, for which every peer raised its flag at the start of
its call n-1, that is after finishing call n-2, the last one to read that half. Programs wait only for the
same row on other GPUs, never for programs on their own GPU, so they cannot deadlock on residency. A peer
that dies leaves the others spinning; the executor kills them.

Pointers arrive as int64 device arrays (every rank's buffer and flag array, from the symmetric-memory
rendezvous) and are cast in the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous


@triton.jit
def _all_reduce_add_rms_norm_kernel(
    out_ptr,  # [T, H] normed output
    x_ptr,  # [T, H] this rank's partial sums
    residual_ptr,  # [T, H] read, then overwritten with the reduced sum + residual
    weight_ptr,  # [H]
    buffer_ptrs,  # int64 [WORLD]: each rank's symmetric buffer, [2, ROWS, WORLD, H] elements of x's dtype
    flag_ptrs,  # int64 [WORLD]: each rank's symmetric flags, int64 [ROWS, WORLD] (row, sender): epochs
    counters_ptr,  # int64 [ROWS], local: how many calls each row has made
    eps,
    rank,
    ROWS: tl.constexpr,
    WORLD: tl.constexpr,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    dtype = x_ptr.dtype.element_ty
    count = tl.load(counters_ptr + row)
    epoch = count + 1
    slots = ((count % 2) * ROWS + row).to(tl.int64) * WORLD * HIDDEN  # this call's row, slot 0

    # Every buffer starts 16-byte aligned and rows are HIDDEN long (a multiple of 8 for the models served),
    # which lets the row be read and written in 16-byte vectors.
    x = tl.load(x_ptr + row * HIDDEN + offs, mask=mask, other=0.0)
    for peer in tl.static_range(WORLD):
        if peer != rank:
            buffer = tl.multiple_of(tl.load(buffer_ptrs + peer).to(tl.pointer_type(dtype)), 16)
            tl.store(buffer + slots + rank * HIDDEN + offs, x, mask=mask)
    tl.debug_barrier()  # every thread's stores are issued before the flags go out (the release covers them)
    for peer in tl.static_range(WORLD):
        if peer != rank:
            flags = tl.load(flag_ptrs + peer).to(tl.pointer_type(tl.int64))
            tl.atomic_xchg(flags + row * WORLD + rank, epoch, sem="release", scope="sys")
    own_flags = tl.load(flag_ptrs + rank).to(tl.pointer_type(tl.int64))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            while tl.atomic_add(own_flags + row * WORLD + peer, 0, sem="acquire", scope="sys") < epoch:
                pass
    tl.debug_barrier()  # no thread reads a peer's slot before the flags are in

    own = tl.multiple_of(tl.load(buffer_ptrs + rank).to(tl.pointer_type(dtype)), 16)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for sender in tl.static_range(WORLD):
        part = x  # this rank's own partial never goes through the buffer
        if sender != rank:
            part = tl.load(own + slots + sender * HIDDEN + offs, mask=mask, other=0.0, cache_modifier=".cg")
        total += part.to(tl.float32)
    reduced = total.to(dtype)  # what the all-reduce would have returned
    r = tl.load(residual_ptr + row * HIDDEN + offs, mask=mask, other=0.0)
    h = (reduced.to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(residual_ptr + row * HIDDEN + offs, h, mask=mask)
    h = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / HIDDEN + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + offs, (h * rstd * w).to(dtype), mask=mask)
    tl.store(counters_ptr + row, epoch)


def all_reduce_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    buffer_ptrs: torch.Tensor,
    flag_ptrs: torch.Tensor,
    counters: torch.Tensor,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [T, H] partial sums, contiguous; residual: [T, H], updated in place. Returns (normed, residual).
    The caller checks the fit: T <= counters.numel() rows, each rank's buffer holds [2, rows, world, H]
    and its flags [rows, world]."""
    T, hidden = x.shape
    out = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _all_reduce_add_rms_norm_kernel[(T,)](
        out,
        x,
        residual,
        weight,
        buffer_ptrs,
        flag_ptrs,
        counters,
        eps,
        rank,
        ROWS=counters.numel(),
        WORLD=world_size,
        HIDDEN=hidden,
        BLOCK=block,
        num_warps=min(16, max(1, block // 512)),
        **launch_options(x),
    )
    return out, residual
