"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases) and a sparse MLP with
a shared expert beside the routed ones, its output scaled by sigmoid(shared_expert_gate(x)). The top-k
weights are not renormalized unless `norm_topk_prob`."""

from __future__ import annotations

from typing import Any

from torch import nn

from engine_service.core.model_config import ModelConfig
from engine_service.layers.moe import SparseMoeBlock
from engine_service.models.llama import LlamaArgs, LlamaMLP
from engine_service.models.qwen3_moe import Qwen3MoeForCausalLM


class Qwen2MoeForCausalLM(Qwen3MoeForCausalLM):
    switches: dict[str, Any] = {}  # q/k/v biases from config.json's qkv_bias (ModelConfig.qkv_bias)

    def make_mlp(self, a: LlamaArgs, config: ModelConfig, layer: int, prefix: str) -> nn.Module:
        moe = config.moe
        if moe is None or not moe.is_sparse(layer):
            return LlamaMLP(a, prefix)
        shared = LlamaMLP(a, f"{prefix}.shared_expert", moe.shared_expert_intermediate_size)
        return SparseMoeBlock(
            moe.num_experts,
            moe.num_experts_per_tok,
            a.hidden_size,
            moe.intermediate_size,
            moe.norm_topk_prob,
            a.tp_rank,
            a.tp_size,
            shared_expert=shared,
            quant=a.quant_for(f"{prefix}.experts"),
        )
