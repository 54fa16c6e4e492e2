"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases) and a sparse MLP with
a shared expert beside the routed ones, its output scaled by sigmoid(shared_expert_gate(x)). The top-k
weights are not renormalized unless `norm_topk_prob`."""

from __future__ import annotations

from typing import Any

from torch import nn

from engine_service.layers.moe import SparseMoeBlock
from engine_service.models.llama import LlamaArgs, LlamaMLP
from engine_service.models.qwen3_moe import Qwen3MoeForCausalLM, is_sparse, num_experts


class Qwen2MoeForCausalLM(Qwen3MoeForCausalLM):
    switches: dict[str, Any] = {}

    @classmethod
    def switches_for(cls, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": bool(hf_config.get("qkv_bias", True))}

    def make_mlp(self, a: LlamaArgs, hf_config: dict[str, Any], layer: int, prefix: str) -> nn.Module:
        if not is_sparse(hf_config, layer):
            return LlamaMLP(a, prefix)
        shared = LlamaMLP(a, f"{prefix}.shared_expert", hf_config["shared_expert_intermediate_size"])
        return SparseMoeBlock(
            num_experts(hf_config),
            hf_config["num_experts_per_tok"],
            a.hidden_size,
            hf_config["moe_intermediate_size"],
            bool(hf_config.get("norm_topk_prob", False)),
            a.tp_rank,
            a.tp_size,
            shared_expert=shared,
        )
