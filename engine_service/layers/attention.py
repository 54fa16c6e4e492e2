"""Attention over the paged KV cache: write this step's K/V into their slots, then attend."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine_service.ops import dispatch as ops


@dataclass
class AttentionMetadata:
    """Where a step's tokens live in the paged cache (see engine_service/ops/torch_ops.py for the layout)."""

    slot_mapping: torch.Tensor  # int64 [T]
    query_start_loc: torch.Tensor  # int32 [S + 1]
    seq_lens: torch.Tensor  # int32 [S]
    block_tables: torch.Tensor  # int32 [S, M]
    max_query_len: int  # host-side upper bounds: launch-shape hints for the GPU kernels
    max_seq_len: int
    num_kv_splits: int | None = None  # fixed split-KV count for decode steps captured in CUDA graphs


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # ([N, B, Hkv, D], [N, B, Hkv, D])
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, Hq, D]
        k_cache, v_cache = kv_cache
        ops.write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        return ops.paged_attention(
            q,
            k_cache,
            v_cache,
            meta.query_start_loc,
            meta.seq_lens,
            meta.block_tables,
            self.scale,
            max_query_len=meta.max_query_len,
            max_seq_len=meta.max_seq_len,
            num_kv_splits=meta.num_kv_splits,
        )
