"""Fused sampling (Triton): `torch_ops.sample_tokens` in one pass over the logits, no host sync.

Read the sampling block of `torch_ops` for the math: greedy rows take the argmax, the others
argmax(logits * log2(e) / T - log2(-log2 u)), u drawn by Philox4x32-10 from (seed, position, column). The
uint32 arithmetic here is the one `torch_ops` does in int64, so both draw bit-identical u; the scores can
still differ in the last bits (see FAST_LOG2, and fused multiply-adds), which changes a token only on a tie
that close.

The two logs. Triton's log2 is a software polynomial (a dozen FMAs); the GPU's lg2.approx is one
instruction, but its error is absolute (2^-22), and the inner log2(u) is -1e-7 for u near 1, where that
error could flip its sign. So the inner log stays the accurate one and only the outer log2(-log2 u)
(argument in [1e-7, 24]; 2^-22 on the noise is a last-bit change to the score) takes the fast one. The
interpreter has no libdevice: it runs tl.log2 for both.

Work split. A program owns one row and a contiguous range of columns (a split), walks it in tiles of
TILE = 4 * BLOCK_R columns laid out [BLOCK_R, 4] (one Philox counter per line, its four words for the four
columns), and keeps a running (best score, column) per lane, updated on a strictly greater score so each
lane holds its lowest column among equals. The split's answer is its max and the lowest column reaching it:

    row b:  | split 0: tile tile tile | split 1: tile tile tile | ... |  -> (value, column) per split

When the batch alone cannot fill the GPU, the vocab is cut into several splits and a torch argmax over the
splits' values (first = lowest columns, on ties) picks the row's answer; otherwise one split writes it.
The launch shape depends only on (B, V), so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from engine_service.ops import torch_ops

_M0 = tl.constexpr(torch_ops.PHILOX_M0)
_M1 = tl.constexpr(torch_ops.PHILOX_M1)
_W0 = tl.constexpr(torch_ops.PHILOX_W0)
_W1 = tl.constexpr(torch_ops.PHILOX_W1)
_LOG2E = tl.constexpr(torch_ops.LOG2E)
_ONE_MINUS_HALF_ULP = tl.constexpr(1.0 - 2.0**-24)

# Launch shape. A tile is 2048 columns (4 KB of bf16 per program in flight per step); splits give about
# PROGRAMS_PER_SM programs per SM when the batch is small, none shorter than MIN_COLS_PER_SPLIT columns.
BLOCK_R = 512
NUM_WARPS = 8
PROGRAMS_PER_SM = 4
MIN_COLS_PER_SPLIT = 4096


@triton.jit
def _philox4x32(c0, c1, c2, c3, k0, k1, ROUNDS: tl.constexpr):
    """Philox4x32 on uint32 values: `torch_ops.philox4x32` round for round."""
    for _ in tl.static_range(ROUNDS):
        hi0, lo0 = tl.umulhi(c0, _M0), c0 * _M0
        hi1, lo1 = tl.umulhi(c2, _M1), c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = k0 + _W0, k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _uniform_tile(first_counter, seed, position, BLOCK_R: tl.constexpr, ROUNDS: tl.constexpr):
    """u for columns 4 * first_counter + [0, 4 * BLOCK_R): float32 [BLOCK_R, 4], row r = counter r."""
    counters = (first_counter + tl.arange(0, BLOCK_R)).to(tl.uint32)[:, None]  # [R, 1]
    zero = tl.zeros([BLOCK_R, 1], dtype=tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    c1 = zero + (position & 0xFFFFFFFF).to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32(counters, c1, zero, zero, k0, k1, ROUNDS)
    word = tl.arange(0, 4)[None, :]  # [1, 4]: column % 4
    bits = tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))  # uint32 [R, 4]
    return ((bits >> 9) | 0x3F800000).to(tl.float32, bitcast=True) - _ONE_MINUS_HALF_ULP


@triton.jit
def _sample_kernel(
    value_ptr,  # float32 [B, S]: the best score of each split
    index_ptr,  # int64 [B, S]: its lowest column
    logits_ptr,  # [B, V]
    temperature_ptr,  # float32 [B]
    seed_ptr,  # int64 [B]
    position_ptr,  # int64 [B]
    stride_lb,
    vocab,
    cols_per_split,  # a multiple of 4 * BLOCK_R
    num_splits,
    BLOCK_R: tl.constexpr,
    ROUNDS: tl.constexpr,
    FAST_LOG2: tl.constexpr,  # lg2.approx for the outer log (CUDA only)
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    temperature = tl.load(temperature_ptr + row)
    seed = tl.load(seed_ptr + row)
    position = tl.load(position_ptr + row)
    # Rounded as torch divides (Triton's `/` is approximate in fp32); greedy rows do not use it.
    scale = tl.math.div_rn(_LOG2E, tl.where(temperature > 0, temperature, 1.0))
    lane = tl.arange(0, BLOCK_R)[:, None] * 4 + tl.arange(0, 4)[None, :]  # [R, 4]: column within the tile
    best = tl.full([BLOCK_R, 4], float("-inf"), dtype=tl.float32)
    best_col = tl.zeros([BLOCK_R, 4], dtype=tl.int32)  # 0 when a whole row is -inf, as torch.argmax says
    start = split * cols_per_split
    end = tl.minimum(start + cols_per_split, vocab)
    for tile in range(start, end, 4 * BLOCK_R):
        cols = tile + lane
        score = tl.load(logits_ptr + row * stride_lb + cols, mask=cols < end, other=float("-inf"))
        score = score.to(tl.float32)
        if temperature > 0:
            exponential = -tl.log2(_uniform_tile(tile // 4, seed, position, BLOCK_R, ROUNDS))  # -log2 u
            if FAST_LOG2:
                score = score * scale - libdevice.fast_log2f(exponential)
            else:
                score = score * scale - tl.log2(exponential)
        better = score > best  # strict: a lane keeps its first (lowest) column among equal scores
        best = tl.where(better, score, best)
        best_col = tl.where(better, cols, best_col)
    top = tl.max(tl.max(best, axis=1), axis=0)
    col = tl.min(tl.min(tl.where(best == top, best_col, vocab), axis=1), axis=0)
    tl.store(value_ptr + row * num_splits + split, top)
    tl.store(index_ptr + row * num_splits + split, col.to(tl.int64))


@triton.jit
def _uniform_kernel(out_ptr, seed_ptr, position_ptr, vocab, BLOCK_R: tl.constexpr, ROUNDS: tl.constexpr):
    """The kernel's noise, written out: for tests that compare it bit for bit with `torch_ops`."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1) * 4 * BLOCK_R
    cols = tile + tl.arange(0, BLOCK_R)[:, None] * 4 + tl.arange(0, 4)[None, :]
    u = _uniform_tile(tile // 4, tl.load(seed_ptr + row), tl.load(position_ptr + row), BLOCK_R, ROUNDS)
    tl.store(out_ptr + row * vocab + cols, u, mask=cols < vocab)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, vocab: int, num_sms: int) -> int:
    """Vocab splits per row: about PROGRAMS_PER_SM programs per SM, no split under MIN_COLS_PER_SPLIT."""
    return max(1, min(triton.cdiv(PROGRAMS_PER_SM * num_sms, max(batch, 1)), vocab // MIN_COLS_PER_SPLIT))


def sample_tokens(
    logits: torch.Tensor,  # [B, V], any float dtype
    temperature: torch.Tensor,  # float32 [B]; 0 = greedy
    seeds: torch.Tensor,  # int64 [B], in [0, 2^63)
    positions: torch.Tensor,  # int64 [B]
    *,
    num_splits: int | None = None,  # vocab splits per row; None: choose_num_splits on CUDA, 1 elsewhere
) -> torch.Tensor:  # int64 [B]
    """Token per row, as `torch_ops.sample_tokens` draws it; never syncs with the host."""
    batch, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if num_splits is None:
        on_cuda = logits.is_cuda
        num_splits = choose_num_splits(batch, vocab, _num_sms(logits.device.index or 0)) if on_cuda else 1
    tile = 4 * BLOCK_R
    cols_per_split = triton.cdiv(triton.cdiv(vocab, num_splits), tile) * tile
    num_splits = triton.cdiv(vocab, cols_per_split)  # no empty split
    values = torch.empty(batch, num_splits, dtype=torch.float32, device=logits.device)
    indices = torch.empty(batch, num_splits, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return indices.view(0)
    _sample_kernel[(batch, num_splits)](
        values,
        indices,
        logits,
        temperature,
        seeds,
        positions,
        logits.stride(0),
        vocab,
        cols_per_split,
        num_splits,
        BLOCK_R=BLOCK_R,
        ROUNDS=torch_ops.PHILOX_ROUNDS,
        FAST_LOG2=logits.is_cuda,
        num_warps=NUM_WARPS,
    )
    if num_splits == 1:
        return indices.view(batch)
    first_best = values.argmax(dim=1, keepdim=True)  # splits run in column order: first = lowest column
    return indices.gather(1, first_best).view(batch)


def sampling_uniform(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """The u the kernel draws: float32 [R, vocab], as `torch_ops.sampling_uniform`."""
    out = torch.empty(seeds.shape[0], vocab, dtype=torch.float32, device=seeds.device)
    if seeds.shape[0]:
        grid = (seeds.shape[0], triton.cdiv(vocab, 4 * BLOCK_R))
        _uniform_kernel[grid](out, seeds, positions, vocab, BLOCK_R=BLOCK_R, ROUNDS=torch_ops.PHILOX_ROUNDS)
    return out
