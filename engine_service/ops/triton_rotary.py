"""Neox-style rotary embedding (Triton), in place on q and k, of the first R dimensions of each head (R: the
cos/sin table's width; the rest are left as they are). Same results as `torch_ops.rotary_embedding`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous


@triton.jit
def _rotate_heads(
    x_ptr,
    stride_h,
    cos,
    sin,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    heads = tl.arange(0, HEADS_PAD)[:, None]
    offs = tl.arange(0, HALF_PAD)[None, :]
    mask = (heads < NUM_HEADS) & (offs < HALF)
    first = x_ptr + heads * stride_h + offs  # [heads, D/2] pointers to the first halves
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    tl.store(first, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr,  # int64 [T]
    q_ptr,  # [T, Hq, D]
    k_ptr,  # [T, Hkv, D]
    cos_sin_ptr,  # [max_positions, R]: cos in [:, :R/2], sin in [:, R/2:]; the first R dims of a head rotate
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cs,
    NUM_Q_HEADS: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_PAD)
    mask = offs < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs, mask=mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs, mask=mask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr + token * stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD, HALF, HALF_PAD)
    _rotate_heads(k_ptr + token * stride_kt, stride_kh, cos, sin, NUM_KV_HEADS, KV_HEADS_PAD, HALF, HALF_PAD)


def rotary_embedding(
    positions: torch.Tensor,  # int64 [T]
    q: torch.Tensor,  # [T, Hq, D]; may be a strided view of a fused qkv output: rotated in place
    k: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # float32 [max_positions, R], R <= D (partial rotary: R < D)
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens, num_q_heads, _ = q.shape
    num_kv_heads = k.shape[1]
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("rotary_embedding needs the head dimension contiguous")
    if num_tokens > 0:
        half = cos_sin_cache.shape[1] // 2
        _rotary_kernel[(num_tokens,)](
            positions,
            q,
            k,
            cos_sin_cache,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            cos_sin_cache.stride(0),
            NUM_Q_HEADS=num_q_heads,
            Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
            NUM_KV_HEADS=num_kv_heads,
            KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
            HALF=half,
            HALF_PAD=triton.next_power_of_2(half),
            num_warps=4,
            **launch_options(q),
        )
    return q, k
