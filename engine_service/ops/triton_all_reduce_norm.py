"""All-reduce + residual add + RMSNorm in one kernel, over symmetric memory (Triton).

In a tensor-parallel decode step every row-parallel projection (attention's o_proj, the MLP's down_proj) is
followed by an all-reduce and then the residual add + RMSNorm of the next sub-layer: two kernels, and at
batch 1 both are pure latency. Here one program per row does all of it, and the only wait on NVLink is one
posted write's way there:

    push      store this rank's partial row into every peer's buffer (this rank's slot of the row there)
              as 64-bit words, each 32 bits of the row (two 16-bit values, or one fp32) beside the call's
              32-bit tag
    wait      poll this rank's own buffer (local memory) until every word of every peer's slot carries
              this call's tag: the data came with it, in the same single-copy-atomic 8-byte store
    reduce    sum the peers' rows and this rank's own partial in rank order (fp32; the same order on
              every rank, so the ranks' residual streams stay bit-identical), round to the model dtype as
              an all-reduce would
    norm      residual <- sum + residual (rounded), out <- rms_norm(residual) * weight

No flag, no fence, no reset: a sender never waits for its stores to be acknowledged (NCCL's LL protocol
does the same). Tags: a per-row call counter in local memory numbers the calls, every rank counting the
same calls; the tag is the call's number + 1, mod 2^32 (0, what a fresh buffer holds, is never the first
tag). Each row alternates between two halves of the buffer (the counter's parity picks the half), so the
words a slot holds are the previous tag's but one, never this call's. A rank writes a half for call n only
after passing call n-1's wait, for which every peer pushed at the start of its call n-1, that is after
finishing call n-2, the last one to read that half. Programs wait only for the same row on other GPUs,
never for programs on their own GPU, so they cannot deadlock on residency. A peer that dies leaves the
others spinning; the executor kills them.

Pointers arrive as an int64 device array (every rank's buffer, from the symmetric-memory rendezvous) and
are cast in the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous

_DATA = tl.constexpr(0xFFFFFFFF)  # the low 32 bits of a word: the row's data
_TAG = tl.constexpr(-(1 << 32))  # 0xFFFFFFFF00000000 as an int64: the high 32 bits, the call's tag


def words_per_row(hidden: int, dtype: torch.dtype) -> int:
    """64-bit words a row of `hidden` values takes in the exchange: 32 bits of data each."""
    return hidden * dtype.itemsize // 4


@triton.jit
def _all_reduce_add_rms_norm_kernel(
    out_ptr,  # [T, H] normed output
    x_ptr,  # [T, H] this rank's partial sums
    residual_ptr,  # [T, H] read, then overwritten with the reduced sum + residual
    weight_ptr,  # [H]
    buffer_ptrs,  # int64 [WORLD]: each rank's symmetric buffer, int64 [2, ROWS, WORLD, WORDS]
    counters_ptr,  # int64 [ROWS], local: how many calls each row has made
    eps,
    rank,
    ROWS: tl.constexpr,
    WORLD: tl.constexpr,
    WORLD_PAD: tl.constexpr,  # WORLD rounded up to a power of two
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,  # HIDDEN rounded up to a power of two
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    row = tl.program_id(0)
    dtype = x_ptr.dtype.element_ty
    PACK: tl.constexpr = 32 // dtype.primitive_bitwidth  # values per word: 2 (16-bit) or 1 (fp32)
    WORDS: tl.constexpr = HIDDEN // PACK
    offs_w = tl.arange(0, BLOCK // PACK)
    mask_w = offs_w < WORDS
    count = tl.load(counters_ptr + row)
    tag = ((count + 1) & _DATA) << 32
    slots = ((count % 2) * ROWS + row).to(tl.int64) * WORLD * WORDS  # this call's row, sender 0's slot

    mine = tl.load(x_ptr.to(tl.pointer_type(tl.uint32)) + row * WORDS + offs_w, mask=mask_w, other=0)
    # Everything else the kernel reads is asked for now, beside this rank's row, so that those round trips
    # overlap it and the peers' pushes instead of following the poll (or the push) one after another.
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    r = tl.load(residual_ptr + row * HIDDEN + offs, mask=mask, other=0.0)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ranks = tl.arange(0, WORLD_PAD)
    bases = tl.load(buffer_ptrs + ranks, mask=ranks < WORLD, other=0)  # every rank's buffer address
    own = _buffer(bases, ranks, rank)
    words = tag | mine.to(tl.int64)  # zero-extended: the tag keeps the high half
    for peer in tl.static_range(WORLD):
        if peer != rank:
            tl.store(_buffer(bases, ranks, peer) + slots + rank * WORDS + offs_w, words, mask=mask_w)

    total = tl.zeros([BLOCK], dtype=tl.float32)
    for sender in tl.static_range(WORLD):
        data = mine  # this rank's own partial never goes through the buffer
        if sender != rank:
            ptrs = own + slots + sender * WORDS + offs_w
            got = tl.load(ptrs, mask=mask_w, other=tag, volatile=True)
            while tl.max(((got & _TAG) != tag).to(tl.int32), axis=0) != 0:
                got = tl.load(ptrs, mask=mask_w, other=tag, volatile=True)
            data = (got & _DATA).to(tl.uint32)
        total += _unpack(data, dtype, PACK).to(tl.float32)

    reduced = total.to(dtype)  # what the all-reduce would have returned
    h = (reduced.to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(residual_ptr + row * HIDDEN + offs, h, mask=mask)
    h = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / HIDDEN + eps)
    tl.store(out_ptr + row * HIDDEN + offs, (h * rstd * w).to(dtype), mask=mask)
    tl.store(counters_ptr + row, count + 1)


@triton.jit
def _buffer(bases, ranks, r):
    """Rank r's buffer, of the addresses read as one vector (every buffer starts 16-byte aligned)."""
    base = tl.sum(tl.where(ranks == r, bases, 0))
    return tl.multiple_of(base.to(tl.pointer_type(tl.int64)), 16)


@triton.jit
def _unpack(data, dtype: tl.constexpr, PACK: tl.constexpr):
    """uint32 words [W] -> their values [W * PACK] in row order (value 2i in the low half of word i)."""
    if PACK == 2:
        low = (data & 0xFFFF).to(tl.uint16).to(dtype, bitcast=True)
        high = (data >> 16).to(tl.uint16).to(dtype, bitcast=True)
        return tl.interleave(low, high)
    else:
        return data.to(dtype, bitcast=True)


def all_reduce_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    buffer_ptrs: torch.Tensor,
    counters: torch.Tensor,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [T, H] partial sums, contiguous; residual: [T, H], updated in place. Returns (normed, residual).
    The caller checks the fit: T <= counters.numel() rows, each rank's buffer holds int64
    [2, rows, world, words_per_row(H)], zeroed before the first call."""
    T, hidden = x.shape
    out = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _all_reduce_add_rms_norm_kernel[(T,)](
        out,
        x,
        residual,
        weight,
        buffer_ptrs,
        counters,
        eps,
        rank,
        ROWS=counters.numel(),
        WORLD=world_size,
        WORLD_PAD=triton.next_power_of_2(world_size),
        HIDDEN=hidden,
        BLOCK=block,
        num_warps=min(16, max(1, block // 512)),
        **launch_options(x),
    )
    return out, residual
