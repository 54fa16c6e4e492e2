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
    # A hybrid model's other KV-cache groups (core/kv_cache_groups.py): (slot_mapping, block_tables) of
    # group g at [g - 1], for the layers of that group; the fields above are group 0's.
    groups: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


class Attention(nn.Module):
    """Per layer: the softmax scale (head_dim^-0.5 unless the model says otherwise: Gemma's
    query_pre_attn_scalar), an optional sliding window and tanh soft-cap of the scores, and the per-tensor
    scales of an fp8 KV cache. The scales come from the checkpoint when it has them (`k_scale`, `v_scale`,
    as vLLM's fp8, compressed-tensors and ModelOpt exports write them) and are 1.0 otherwise.
    `kv_group`: the KV-cache group whose slots and block table the layer reads (set by the model runner
    for a hybrid model's sliding layers; 0 otherwise)."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float | None = None,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale if scale is not None else head_dim**-0.5
        self.sliding_window = sliding_window or None
        self.logit_softcap = logit_softcap or None
        self.k_scale = _optional_scale()
        self.v_scale = _optional_scale()
        self.fp8_scales = (1.0, 1.0)  # host copies of the two, read every step without a device sync
        self.kv_group = 0

    def process_weights_after_loading(self) -> None:
        self.fp8_scales = (float(self.k_scale), float(self.v_scale))

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # ([N, B, Hkv, D], [N, B, Hkv, D])
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, Hq, D]
        k_cache, v_cache = kv_cache
        k_scale, v_scale = self.fp8_scales if k_cache.dtype == torch.float8_e4m3fn else (1.0, 1.0)
        if self.kv_group:
            slot_mapping, block_tables = meta.groups[self.kv_group - 1]
        else:
            slot_mapping, block_tables = meta.slot_mapping, meta.block_tables
        ops.write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
        return ops.paged_attention(
            q,
            k_cache,
            v_cache,
            meta.query_start_loc,
            meta.seq_lens,
            block_tables,
            self.scale,
            max_query_len=meta.max_query_len,
            max_seq_len=meta.max_seq_len,
            num_kv_splits=meta.num_kv_splits,
            sliding_window=self.sliding_window,
            logit_softcap=self.logit_softcap,
            k_scale=k_scale,
            v_scale=v_scale,
        )


def _optional_scale() -> nn.Parameter:
    """A float32 scalar a checkpoint may hold (and dummy weights leave at 1.0)."""
    param = nn.Parameter(torch.ones((), dtype=torch.float32), requires_grad=False)
    param.optional = True  # not in every checkpoint: keeps 1.0 where absent
    param.dummy_value = 1.0
    param.weight_loader = lambda p, loaded: p.data.copy_(loaded[...].reshape(()))
    return param
