"""Rotary embedding and the KV-cache write in one kernel (Triton): one program per token rotates q in place
and writes the rotated k and v into the token's cache slot. Where the two ran apart (`triton_rotary`, then
`triton_kv_cache`), k went to memory rotated and was read back: here it is read once. Same results as
`torch_ops.rotary_embedding` followed by `torch_ops.write_kv_cache` (k rounded to its dtype after rotating,
then to the cache's); k itself is left as it came, the cache holds its rotation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous
from engine_service.ops.triton_rotary import _rotate_heads


@triton.jit
def _rotary_kv_cache_kernel(
    positions_ptr,  # int64 [T]
    q_ptr,  # [T, Hq, D], rotated in place
    k_ptr,  # [T, Hkv, D]
    v_ptr,  # [T, Hkv, D]
    cos_sin_ptr,  # float32 [max_positions, D]: cos in [:, :D/2], sin in [:, D/2:]
    k_cache_ptr,  # [N, B, Hkv, D]
    v_cache_ptr,  # [N, B, Hkv, D]
    slot_mapping_ptr,  # int64 [T]; -1: a padding token, nothing written
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cs,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    NUM_Q_HEADS: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_PAD)
    cs_mask = offs < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs, mask=cs_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs, mask=cs_mask, other=0.0).to(tl.float32)[
        None, :
    ]
    _rotate_heads(q_ptr + token * stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD, HALF, HALF_PAD)

    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:
        block = slot // BLOCK_SIZE
        in_block = slot % BLOCK_SIZE
        heads = tl.arange(0, KV_HEADS_PAD)[:, None]
        halves = offs[None, :]
        mask = (heads < NUM_KV_HEADS) & (halves < HALF)
        k_src = k_ptr + token * stride_kt + heads * stride_kh + halves  # [heads, D/2]: the first halves
        k1 = tl.load(k_src, mask=mask, other=0.0).to(tl.float32)
        k2 = tl.load(k_src + HALF, mask=mask, other=0.0).to(tl.float32)
        k_dst = k_cache_ptr + block * stride_kcb + in_block * stride_kcs + heads * stride_kch + halves
        k_rot1 = (k1 * cos - k2 * sin).to(k_ptr.dtype.element_ty)  # rounded as the torch path rounds it
        k_rot2 = (k2 * cos + k1 * sin).to(k_ptr.dtype.element_ty)
        tl.store(k_dst, k_rot1.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(k_dst + HALF, k_rot2.to(k_cache_ptr.dtype.element_ty), mask=mask)
        v_src = v_ptr + token * stride_vt + heads * stride_vh + halves
        v_dst = v_cache_ptr + block * stride_vcb + in_block * stride_vcs + heads * stride_vch + halves
        tl.store(v_dst, tl.load(v_src, mask=mask).to(v_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=mask).to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_and_write_kv_cache(
    positions: torch.Tensor,  # int64 [T]
    q: torch.Tensor,  # [T, Hq, D]; may be a strided view of a fused qkv output: rotated in place
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # float32 [max_positions, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]; -1 = skip
) -> torch.Tensor:
    """Returns q, rotated (in place); rotated k and v land in their cache slots."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    views = (q, k, v, k_cache, v_cache)
    if any(t.stride(-1) != 1 for t in views) or cos_sin_cache.stride(1) != 1 or head_dim % 2:
        raise ValueError("rotary_and_write_kv_cache needs an even head dimension, contiguous")
    if num_tokens == 0:
        return q
    half = head_dim // 2
    _rotary_kv_cache_kernel[(num_tokens,)](
        positions,
        q,
        k,
        v,
        cos_sin_cache,
        k_cache,
        v_cache,
        slot_mapping,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        cos_sin_cache.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        NUM_Q_HEADS=num_q_heads,
        Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
        NUM_KV_HEADS=num_kv_heads,
        KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HALF=half,
        HALF_PAD=triton.next_power_of_2(half),
        BLOCK_SIZE=k_cache.shape[1],
        num_warps=4,
        **launch_options(q),
    )
    return q
