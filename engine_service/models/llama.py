"""The Llama family: Llama 2/3/3.x, SmolLM2 and Mistral; Qwen2 and Qwen3 differ only in two switches.

    x -> embed -> [RMSNorm -> attention -> +residual -> RMSNorm -> SwiGLU MLP -> +residual] x L
      -> RMSNorm -> LM head

`qkv_bias` (Qwen2) adds biases to the q/k/v projection; `qk_norm` (Qwen3) RMS-normalizes each head of
q and k before the rotary embedding. The mixture-of-experts and Phi-3 files build on these classes
(`make_mlp` puts a sparse MLP in a layer; `sliding_window` makes every layer's attention windowed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine_service.core.model_config import ModelConfig
from engine_service.core.quant_config import QuantConfig
from engine_service.layers.activation import SiluAndMul
from engine_service.layers.attention import Attention, AttentionMetadata
from engine_service.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from engine_service.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine_service.layers.norm import RMSNorm
from engine_service.layers.rotary import RotaryEmbedding, rope_max_positions

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LlamaArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    rope: dict[str, Any]
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None  # every layer's attention windowed (Phi-3); None: full attention
    tp_rank: int = 0
    tp_size: int = 1
    quant: QuantConfig | None = None

    def quant_for(self, name: str) -> QuantConfig | None:
        """The quantization of the module with checkpoint name `name` (None: unquantized)."""
        return self.quant.for_module(name) if self.quant is not None else None

    @classmethod
    def from_config(cls, c: ModelConfig, tp_rank: int = 0, tp_size: int = 1, **switches: Any) -> LlamaArgs:
        """The model's view of `c` on one rank; `switches` (qkv_bias, qk_norm, sliding_window) are the
        architecture's."""
        switches = {"qkv_bias": c.qkv_bias, "o_bias": c.attention_bias, **switches}
        return cls(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            num_kv_heads=c.num_kv_heads,
            head_dim=c.head_dim,
            rms_norm_eps=c.rms_norm_eps,
            max_positions=rope_max_positions(c.rope),
            rope=c.rope,
            tie_word_embeddings=c.tie_word_embeddings,
            tp_rank=tp_rank,
            tp_size=tp_size,
            quant=c.quantization,
            **switches,
        )


class LlamaAttention(nn.Module):
    """q/k/v, rotary, paged attention, o. What other families change comes as keywords: the q/k norm's
    class, the softmax scale, a window and a soft cap of the scores, and whether o_proj reduces itself
    (Gemma's sandwich norms take a full sum; Llama's residual-add norm reduces it instead)."""

    def __init__(
        self,
        a: LlamaArgs,
        rotary: RotaryEmbedding,
        prefix: str,
        *,
        norm: type[nn.Module] = RMSNorm,
        scale: float | None = None,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
        reduce_results: bool = False,
    ):
        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            a.hidden_size,
            a.head_dim,
            a.num_heads,
            a.num_kv_heads,
            a.qkv_bias,
            a.tp_rank,
            a.tp_size,
            quant=a.quant_for(f"{prefix}.q_proj"),
        )
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = a.head_dim
        self.o_proj = RowParallelLinear(  # unreduced: the post-attention norm sums it (LlamaDecoderLayer)
            a.num_heads * a.head_dim,
            a.hidden_size,
            a.o_bias,
            a.tp_rank,
            a.tp_size,
            reduce_results=reduce_results,
            quant=a.quant_for(f"{prefix}.o_proj"),
        )
        self.rotary = rotary
        self.q_norm = norm(a.head_dim, a.rms_norm_eps) if a.qk_norm else None
        self.k_norm = norm(a.head_dim, a.rms_norm_eps) if a.qk_norm else None
        self.attn = Attention(
            self.num_heads,
            self.num_kv_heads,
            a.head_dim,
            scale=scale,
            sliding_window=sliding_window,
            logit_softcap=logit_softcap,
        )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, kv: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hkv) D]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(T, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.reshape(T, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.reshape(T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v, kv, meta)  # [T, Hq, D]
        return self.o_proj(out.reshape(T, q_size))


class LlamaMLP(nn.Module):
    """Gated MLP (SwiGLU unless `act` says otherwise: Gemma's GELU-tanh) whose down projection returns
    partial sums under TP, reduced by the next norm (`reduce_results`: it reduces itself)."""

    def __init__(
        self,
        a: LlamaArgs,
        prefix: str,
        intermediate_size: int | None = None,
        *,
        act: nn.Module | None = None,
        reduce_results: bool = False,
    ):
        super().__init__()
        intermediate = intermediate_size or a.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            a.hidden_size,
            [intermediate] * 2,
            False,
            a.tp_rank,
            a.tp_size,
            quant=a.quant_for(f"{prefix}.gate_proj"),
        )
        self.down_proj = RowParallelLinear(  # unreduced: the next input norm (or the final norm) sums it
            intermediate,
            a.hidden_size,
            False,
            a.tp_rank,
            a.tp_size,
            reduce_results=reduce_results,
            quant=a.quant_for(f"{prefix}.down_proj"),
        )
        self.act = act if act is not None else SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Under tensor parallelism the sub-layers return partial sums (their row-parallel projections do not
    reduce) and each residual-add norm sums them over the ranks first: one all-reduce + add + norm kernel
    where the one-shot path is installed. The first layer's input norm gets the embedding: reduced, without
    a residual, at TP=1; partial, with a zero residual, under TP (LlamaModel)."""

    def __init__(self, a: LlamaArgs, rotary: RotaryEmbedding, mlp: nn.Module, prefix: str):
        super().__init__()
        reduce = a.tp_size > 1
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps, reduce_input=reduce)
        self.self_attn = LlamaAttention(a, rotary, f"{prefix}.self_attn", sliding_window=a.sliding_window)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps, reduce_input=reduce)
        self.mlp = mlp

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
        x = self.self_attn(positions, x, kv, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """`make_mlp(layer index, checkpoint prefix)` gives each layer its MLP (dense or mixture of experts)."""

    def __init__(self, a: LlamaArgs, make_mlp: Callable[[int, str], nn.Module]):
        super().__init__()
        # Under TP the lookup stays partial: the first layer's input norm sums it (a zero residual), one
        # all-reduce + norm kernel where the embedding's own all-reduce and a norm were two.
        self.partial_embedding = a.tp_size > 1
        self.embed_tokens = VocabParallelEmbedding(
            a.vocab_size, a.hidden_size, a.tp_rank, a.tp_size, reduce_results=not self.partial_embedding
        )
        rotary = RotaryEmbedding(a.head_dim, a.max_positions, a.rope)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(a, rotary, make_mlp(i, f"model.layers.{i}.mlp"), f"model.layers.{i}")
            for i in range(a.num_layers)
        )
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps, reduce_input=a.tp_size > 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T] -> [T, hidden]
        x = self.embed_tokens(input_ids)
        residual = torch.zeros_like(x) if self.partial_embedding else None
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(positions, x, residual, kv, meta)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (our parameter fragment, shard id)
    stacked_params = {
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }
    switches: dict[str, Any] = {}
    # Whether this architecture's attention honours config.json's `sliding_window` (Phi-3, Gemma). The
    # others attend to the whole context, so the engine caps their context at the window (see max_context).
    honours_sliding_window = False
    # Whether FP8 checkpoints of this architecture load (all built-in ones do; a class registered from
    # outside may say no, and the engine then refuses such a checkpoint at start).
    fp8_checkpoints = True

    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.args = a = LlamaArgs.from_config(config, tp_rank, tp_size, **self.switches_for(config))
        self.model = LlamaModel(a, lambda i, prefix: self.make_mlp(a, config, i, prefix))
        self.lm_head = ParallelLMHead(a.vocab_size, a.hidden_size, a.tp_rank, a.tp_size)
        if a.tie_word_embeddings:
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
        return self.lm_head(hidden)

    @classmethod
    def switches_for(cls, config: ModelConfig) -> dict[str, Any]:
        """LlamaArgs fields this architecture sets (beyond what from_config reads)."""
        return dict(cls.switches)

    def make_mlp(self, a: LlamaArgs, config: ModelConfig, layer: int, prefix: str) -> nn.Module:
        return LlamaMLP(a, prefix)

    @classmethod
    def max_context(cls, config: ModelConfig) -> int:
        """The longest context the model serves: its rotary embedding's, capped at the sliding window when
        its attention attends to everything instead (exact only within the window)."""
        limit = min(rope_max_positions(p) for p in config.ropes)
        if config.sliding_window and not cls.honours_sliding_window:
            limit = min(limit, config.sliding_window)
        return limit


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    switches = {"qkv_bias": True}


class Qwen3ForCausalLM(LlamaForCausalLM):
    switches = {"qk_norm": True}
