"""Mixtral (8x7B, 8x22B): Llama's attention with a sparse MLP in every layer, 8 experts of which each
token takes 2 (`num_experts_per_tok`), their softmax weights always renormalized. Checkpoints name the
block `block_sparse_moe` and the expert matrices w1 (gate), w3 (up), w2 (down)."""

from __future__ import annotations

from torch import nn

from engine_service.core.model_config import ModelConfig
from engine_service.layers.moe import SparseMoeBlock, expert_target
from engine_service.models.llama import LlamaArgs, LlamaForCausalLM


class MixtralForCausalLM(LlamaForCausalLM):
    def make_mlp(self, a: LlamaArgs, config: ModelConfig, layer: int, prefix: str) -> nn.Module:
        moe = config.moe  # num_local_experts is never 0 for Mixtral (transformers' default: 8)
        return SparseMoeBlock(
            moe.num_experts,
            moe.num_experts_per_tok,
            a.hidden_size,
            moe.intermediate_size,
            moe.norm_topk_prob,  # Mixtral: True (its family default: transformers always renormalizes)
            a.tp_rank,
            a.tp_size,
            quant=a.quant_for(f"{prefix}.experts"),
        )

    def rename_checkpoint(self, name: str) -> str:
        return name.replace(".block_sparse_moe.", ".mlp.")

    def checkpoint_target(self, name: str) -> tuple[str, object] | None:
        return expert_target(name)
