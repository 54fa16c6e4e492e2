"""Gemma 2: sliding-window layers interleaved with global ones, soft-capped logits, sandwich norms.

    x -> embed * sqrt(hidden) -> [norm -> attention -> norm -> +residual
                                  -> norm -> GeGLU MLP -> norm -> +residual] x L -> norm -> LM head -> softcap

Differences from Llama, each from the released configs and transformers' modeling_gemma2.py:
  - RMSNorm scales by (1 + w) (GemmaRMSNorm), and each sub-layer has a norm before and after it;
  - the embedding is multiplied by sqrt(hidden_size), rounded to the model's dtype;
  - the MLP is gelu(tanh)(gate) * up;
  - the softmax scale is query_pre_attn_scalar^-0.5, attention scores are soft-capped
    (attn_logit_softcapping * tanh(s / cap)), and so are the final logits (final_logit_softcapping);
  - `layer_types` says which layers attend within `sliding_window` keys (older configs: every other
    layer, the first one sliding).
Gemma 3 (gemma3.py) adds q/k norms and a second rope base for the sliding layers, and drops the soft caps.

Under tensor parallelism the attention output and the MLP are reduced before their post-norms (a norm of
a partial sum is not the partial of a norm), unlike the Llama family's reduce fused with the next add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine_service.core.model_config import FULL, SLIDING, ModelConfig
from engine_service.core.quant_config import QuantConfig
from engine_service.layers.activation import GeluTanhAndMul
from engine_service.layers.attention import AttentionMetadata
from engine_service.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from engine_service.layers.norm import GemmaRMSNorm
from engine_service.layers.rotary import RotaryEmbedding, rope_max_positions
from engine_service.models.llama import KVCache, LlamaAttention, LlamaForCausalLM, LlamaMLP


@dataclass(frozen=True)
class GemmaArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    query_pre_attn_scalar: float
    sliding_window: int | None  # the sliding layers' (GemmaAttention gives it to those alone)
    layer_types: tuple[str, ...]
    attn_softcap: float | None
    final_softcap: float | None
    qk_norm: bool
    tie_word_embeddings: bool = True  # Gemma always ties them (an lm_head.weight in a checkpoint is skipped)
    qkv_bias: bool = False  # what LlamaAttention reads: Gemma has no biases
    o_bias: bool = False
    tp_rank: int = 0
    tp_size: int = 1
    quant: QuantConfig | None = None

    def quant_for(self, name: str) -> QuantConfig | None:
        return self.quant.for_module(name) if self.quant is not None else None

    @classmethod
    def from_config(cls, c: ModelConfig, qk_norm: bool, tp_rank: int, tp_size: int) -> GemmaArgs:
        if c.hidden_act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(
                f"Gemma's hidden_activation {c.hidden_act!r} is not supported (supported: gelu_pytorch_tanh)"
            )
        return cls(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            rms_norm_eps=c.rms_norm_eps,
            query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim,
            sliding_window=c.sliding_window,
            layer_types=c.layer_types,  # always set for Gemma: config.json's, or the family's pattern
            attn_softcap=c.attn_logit_softcapping,
            final_softcap=c.final_logit_softcapping,
            qk_norm=qk_norm,
            tp_rank=tp_rank,
            tp_size=tp_size,
            quant=c.quantization,
        )


class GemmaAttention(LlamaAttention):
    """Llama's attention with Gemma's (1 + w) q/k norms (Gemma 3), query_pre_attn_scalar as the softmax
    scale, soft-capped scores, and the window on sliding layers; o_proj reduces itself (the sandwich norm
    after it needs the full sum)."""

    def __init__(self, a: GemmaArgs, rotary: RotaryEmbedding, sliding: bool, prefix: str):
        super().__init__(
            a,
            rotary,
            prefix,
            norm=GemmaRMSNorm,
            scale=a.query_pre_attn_scalar**-0.5,
            sliding_window=a.sliding_window if sliding else None,
            logit_softcap=a.attn_softcap,
            reduce_results=True,
        )


class GemmaDecoderLayer(nn.Module):
    def __init__(self, a: GemmaArgs, rotary: RotaryEmbedding, sliding: bool, prefix: str):
        super().__init__()
        self.input_layernorm = GemmaRMSNorm(a.hidden_size, a.rms_norm_eps)
        self.self_attn = GemmaAttention(a, rotary, sliding, f"{prefix}.self_attn")
        self.post_attention_layernorm = GemmaRMSNorm(a.hidden_size, a.rms_norm_eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(a.hidden_size, a.rms_norm_eps)
        self.mlp = LlamaMLP(a, f"{prefix}.mlp", act=GeluTanhAndMul(), reduce_results=True)
        self.post_feedforward_layernorm = GemmaRMSNorm(a.hidden_size, a.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        kv: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(positions, x, kv, meta))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class GemmaModel(nn.Module):
    def __init__(self, a: GemmaArgs, rotaries: dict[str, RotaryEmbedding]):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(a.vocab_size, a.hidden_size, a.tp_rank, a.tp_size)
        self.rotaries = nn.ModuleDict(rotaries)  # one per layer type (Gemma 2: both the same)
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(a, self.rotaries[kind], kind == SLIDING, f"model.layers.{i}")
            for i, kind in enumerate(a.layer_types)
        )
        self.norm = GemmaRMSNorm(a.hidden_size, a.rms_norm_eps)
        # sqrt(hidden) rounded to the model dtype, as transformers has it (built under that default dtype)
        self.embed_scale = float(torch.tensor(a.hidden_size**0.5, dtype=torch.get_default_dtype()))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T] -> [T, hidden]
        x = self.embed_tokens(input_ids) * self.embed_scale
        residual = None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(positions, x, residual, kv, meta)
        x, _ = self.norm(x, residual)
        return x


class Gemma2ForCausalLM(nn.Module):
    stacked_params = LlamaForCausalLM.stacked_params  # the same fused qkv and gate_up
    qk_norm = False
    honours_sliding_window = True
    fp8_checkpoints = True

    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.args = a = GemmaArgs.from_config(config, self.qk_norm, tp_rank, tp_size)
        # Gemma 3's sliding layers rotate with their own base (ModelConfig.rope_local); Gemma 2's as the rest.
        ropes = {SLIDING: config.rope_local or config.rope, FULL: config.rope}
        rotaries = {
            kind: RotaryEmbedding(a.head_dim, rope_max_positions(params), params)
            for kind, params in ropes.items()
        }
        self.model = GemmaModel(a, rotaries)
        self.lm_head = ParallelLMHead(a.vocab_size, a.hidden_size, a.tp_rank, a.tp_size)
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, hidden] -> [B, vocab]
        logits = self.lm_head(hidden)
        cap = self.args.final_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    @classmethod
    def max_context(cls, config: ModelConfig) -> int:
        return min(rope_max_positions(p) for p in config.ropes)
