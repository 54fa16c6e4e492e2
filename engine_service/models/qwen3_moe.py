"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k norms) with a sparse MLP in every
layer: `num_experts` experts (config.json calls it num_experts, transformers 5 num_local_experts),
`num_experts_per_tok` of them per token, renormalized when `norm_topk_prob`. Layers listed in
`mlp_only_layers`, or off the `decoder_sparse_step` grid, keep a dense MLP."""

from __future__ import annotations

from torch import nn

from engine_service.core.model_config import ModelConfig
from engine_service.layers.moe import SparseMoeBlock, expert_target
from engine_service.models.llama import LlamaArgs, LlamaForCausalLM, LlamaMLP


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    switches = {"qk_norm": True}

    def make_mlp(self, a: LlamaArgs, config: ModelConfig, layer: int, prefix: str) -> nn.Module:
        moe = config.moe
        if moe is None or not moe.is_sparse(layer):
            return LlamaMLP(a, prefix)
        return SparseMoeBlock(
            moe.num_experts,
            moe.num_experts_per_tok,
            a.hidden_size,
            moe.intermediate_size,
            moe.norm_topk_prob,
            a.tp_rank,
            a.tp_size,
            quant=a.quant_for(f"{prefix}.experts"),
        )

    def checkpoint_target(self, name: str) -> tuple[str, object] | None:
        return expert_target(name)
