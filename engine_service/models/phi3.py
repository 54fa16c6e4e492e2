"""Phi-3 / Phi-3.5 / Phi-4-mini: the Llama layer with fused checkpoint tensors, longrope and a window.

- `self_attn.qkv_proj` and `mlp.gate_up_proj` are single checkpoint tensors: each is cut into its
  q / k / v (gate / up) parts as it loads, and each part sharded as Llama's are (linear.py);
- rope: `longrope` (Phi-3.5, Phi-4-mini, the 128k Phi-3s: short factors within
  original_max_position_embeddings, long ones past it) and `partial_rotary_factor` (Phi-4-mini: 0.75);
- every layer attends within `sliding_window` keys when the config sets one (Phi-3-mini-4k: 2047).
"""

from __future__ import annotations

from typing import Any

from engine_service.core.model_config import ModelConfig
from engine_service.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    stacked_params: dict[str, tuple[str, object]] = {}  # already fused: loaded with shard id None, then cut
    honours_sliding_window = True

    @classmethod
    def switches_for(cls, config: ModelConfig) -> dict[str, Any]:
        return {"sliding_window": config.sliding_window}
