"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k norms) with a sparse MLP in every
layer: `num_experts` experts (config.json calls it num_experts, transformers 5 num_local_experts),
`num_experts_per_tok` of them per token, renormalized when `norm_topk_prob`. Layers listed in
`mlp_only_layers`, or off the `decoder_sparse_step` grid, keep a dense MLP."""

from __future__ import annotations

from typing import Any

from torch import nn

from engine_service.layers.moe import SparseMoeBlock, expert_target
from engine_service.models.llama import LlamaArgs, LlamaForCausalLM, LlamaMLP


def num_experts(cfg: dict[str, Any]) -> int:
    return int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)


def is_sparse(cfg: dict[str, Any], layer: int) -> bool:
    step = cfg.get("decoder_sparse_step", 1) or 1
    return (
        layer not in (cfg.get("mlp_only_layers") or []) and num_experts(cfg) > 0 and (layer + 1) % step == 0
    )


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    switches = {"qk_norm": True}
    fp8_checkpoints = False

    def make_mlp(self, a: LlamaArgs, hf_config: dict[str, Any], layer: int, prefix: str) -> nn.Module:
        if not is_sparse(hf_config, layer):
            return LlamaMLP(a, prefix)
        return SparseMoeBlock(
            num_experts(hf_config),
            hf_config["num_experts_per_tok"],
            a.hidden_size,
            hf_config["moe_intermediate_size"],
            bool(hf_config.get("norm_topk_prob", False)),
            a.tp_rank,
            a.tp_size,
        )

    def checkpoint_target(self, name: str) -> tuple[str, object] | None:
        return expert_target(name)
