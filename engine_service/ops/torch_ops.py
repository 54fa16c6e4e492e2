"""Plain-torch reference implementations of the engine's kernels (the CPU path).

KV-cache layout, shared with the Triton kernels:
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    slot = block_id * block_size + offset_in_block; slot -1 means "do not write" (padding).

A step is a flat batch of T new tokens from S sequences:
    query_start_loc: int32 [S + 1]  tokens of sequence s are q[query_start_loc[s]:query_start_loc[s+1]]
    seq_lens:        int32 [S]      tokens in the cache for s after this step's writes (context + new)
    block_tables:    int32 [S, M]   block ids of s, in order; unused entries are ignored

      seq s:  |<------------- seq_lens[s] ------------->|
              | cached context (already in KV) | new q  |
                                               ^ query i sits at position seq_len - q_len + i
    and attends causally to keys 0 ..= its position.
"""

from __future__ import annotations

import torch


def write_kv_cache(
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    query_start_loc: torch.Tensor,  # int32 [S + 1]
    seq_lens: torch.Tensor,  # int32 [S]
    block_tables: torch.Tensor,  # int32 [S, M]
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each sequence's new queries over its paged KV (prefill chunks and decodes alike)."""
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for s, seq_len in enumerate(lens):
        q_s = q[starts[s] : starts[s + 1]]  # [L, Hq, D]
        q_len = q_s.shape[0]
        if q_len == 0:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = block_tables[s, :num_blocks].long()
        k_s = k_cache[blocks].flatten(0, 1)[:seq_len].to(q.dtype)  # [C, Hkv, D]
        v_s = v_cache[blocks].flatten(0, 1)[:seq_len].to(q.dtype)
        k_s = k_s.repeat_interleave(group, dim=1)  # [C, Hq, D]
        v_s = v_s.repeat_interleave(group, dim=1)
        scores = torch.einsum("lhd,chd->hlc", q_s.float(), k_s.float()) * scale  # [Hq, L, C]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]  # [L, 1]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]  # [1, C]
        scores.masked_fill_(k_pos > q_pos, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[s] : starts[s + 1]] = torch.einsum("hlc,chd->lhd", probs, v_s.float()).to(q.dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual <- x + residual; returns (rms_norm(residual), residual). Out of place on this path."""
    residual = (x.float() + residual.float()).to(x.dtype)
    return rms_norm(residual, weight, eps), residual


def rotary_embedding(
    positions: torch.Tensor,  # int64 [T]
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # float32 [max_positions, D]: cos in [:, :D/2], sin in [:, D/2:]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding (rotate halves), as Llama/Mistral/Qwen checkpoints in HF format use."""
    half = q.shape[-1] // 2
    cos, sin = cos_sin_cache[positions].float().split(half, dim=-1)  # [T, D/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().split(half, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> silu(gate) * up: [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
