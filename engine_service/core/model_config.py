"""ModelConfig: what the engine and the models know about a model, read once from its Hugging Face folder.

`config.json` is parsed here and nowhere else in the engine: the engine, the tensor-parallel checks, the
model classes and the rotary embedding read the typed fields below (tensor-parallel workers get this
object from the driver, pickled). A model family that needs a key not here adds a field, with the same
defaults transformers uses (a family's own defaults in _FAMILY_DEFAULTS). There is no raw `hf_config`:
every key the engine reads has a name and a type. What a family alone reads is grouped where it is clearer
as one value: the experts of a mixture-of-experts model (MoeConfig), the checkpoint's quantization
(QuantConfig, core/quant_config.py: config.json's `quantization_config` or ModelOpt's hf_quant_config.json).

Parsing is also where a checkpoint Pagoda cannot run is refused, in one sentence that names what it uses:
an architecture outside `supported`, a quantization method or scheme, a rope scaling type. (Whether a model
class runs what parsed, e.g. FP8 weights, is the model registry's check_supported.)
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine_service.core.quant_config import (
    QuantConfig,
    modelopt_quantization_config,
    parse_quantization,
)

SLIDING, FULL = "sliding_attention", "full_attention"  # config.json's layer types
# The rope scalings layers/rotary.py implements (see there); "su" is early Phi-3's name for longrope.
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")
_ROPE_ALIASES = {"su": "longrope"}
_NEEDS_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")

# transformers' defaults that differ by family, for keys a config.json may leave out.
_GEMMA = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256}
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # Gemma 2: every other layer slides (the first one); both soft caps on.
    "Gemma2ForCausalLM": {
        **_GEMMA,
        "sliding_window_pattern": 2,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    # Gemma 3: five sliding layers to one global; global rope base 1e6, the sliding layers' 1e4.
    "Gemma3ForCausalLM": {
        **_GEMMA,
        "sliding_window_pattern": 6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "max_position_embeddings": 131_072,
    },
    # Mixtral: always renormalizes its top-k weights (its config.json has no norm_topk_prob).
    "MixtralForCausalLM": {"num_local_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True},
    "Qwen2MoeForCausalLM": {"qkv_bias": True},
}


@dataclass(frozen=True)
class MoeConfig:
    """The sparse MLPs of a mixture-of-experts model (Mixtral, Qwen2-MoE, Qwen3-MoE)."""

    num_experts: int  # routed experts of a sparse layer (num_experts; Mixtral: num_local_experts)
    num_experts_per_tok: int  # experts each token is routed to (top-k of the router's softmax)
    intermediate_size: int  # one expert's inner width (moe_intermediate_size; Mixtral: intermediate_size)
    norm_topk_prob: bool  # renormalize the top-k weights to sum to one
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's shared expert beside the routed ones; 0: none
    decoder_sparse_step: int = 1  # every step-th layer is sparse (counting from 1)
    mlp_only_layers: tuple[int, ...] = ()  # layers that keep a dense MLP

    def is_sparse(self, layer: int) -> bool:
        return layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0


@dataclass(frozen=True)
class ModelConfig:
    path: str
    architecture: str  # the first of config.json's `architectures`: the model registry's key
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # the MLP's inner width
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool  # the LM head is the embedding matrix
    attention_bias: bool  # biases on the q/k/v/o projections (some Llama checkpoints)
    sliding_window: int | None  # attention window of the checkpoint; None: full attention
    eos_token_ids: tuple[int, ...]
    torch_dtype: str  # dtype the checkpoint was saved in
    # The rotary embedding (of the full-attention layers, where `rope_local` is set), one flat dict (see
    # rope_parameters): rope_type (one of ROPE_TYPES), rope_theta, partial_rotary_factor,
    # max_position_embeddings, original_max_position_embeddings where the scaling needs it, and the
    # scaling's own keys (factor, low/high_freq_factor, beta_fast/slow, mscale, short/long_factor...).
    rope: dict[str, Any]
    # Gemma 3's sliding layers rotate with their own base (rope_local_base_freq, unscaled); None: every layer
    # uses `rope`.
    rope_local: dict[str, Any] | None = None
    qkv_bias: bool = False  # biases on q/k/v only (Qwen2-MoE's qkv_bias); the o projection's: attention_bias
    hidden_act: str = "silu"  # the MLP's activation (hidden_activation or hidden_act)
    # Per layer, sliding_attention or full_attention (config.json's layer_types, else every
    # sliding_window_pattern-th layer full: Gemma); None: the architecture decides (one kind for all).
    layer_types: tuple[str, ...] | None = None
    query_pre_attn_scalar: float | None = None  # Gemma: softmax scale query_pre_attn_scalar^-0.5
    attn_logit_softcapping: float | None = None  # Gemma 2: scores become cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # Gemma 2: so do the logits
    moe: MoeConfig | None = None  # None: a dense model
    # The checkpoint's quantization, or the on-load one EngineConfig.quantization asked for; None: none.
    quantization: QuantConfig | None = None
    # Embedding models (core/pooling.py): may their vectors be shortened, and to which lengths (empty: any)?
    is_matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()

    @property
    def ropes(self) -> tuple[dict[str, Any], ...]:
        """Every rotary embedding the model builds."""
        return (self.rope,) if self.rope_local is None else (self.rope, self.rope_local)

    @classmethod
    def from_dir(
        cls, path: str | Path, supported: Collection[str] | None = None, quantization: str | None = None
    ) -> ModelConfig:
        """`supported`: the architectures the caller can build (the model registry's), checked first, so
        that an unsupported model is named as such rather than by a key it lacks. `quantization`:
        EngineConfig.quantization (an unquantized checkpoint quantized as it loads)."""
        folder = Path(path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder: it has no config.json")
        cfg = json.loads(config_file.read_text())
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError(f"{config_file} names no architecture ('architectures' is empty)")
        if supported is not None and archs[0] not in supported:
            raise ValueError(unsupported_architecture(archs[0], supported))
        exported = folder / "hf_quant_config.json"  # ModelOpt writes its quantization beside config.json
        if cfg.get("quantization_config") is None and exported.is_file():
            cfg["quantization_config"] = modelopt_quantization_config(json.loads(exported.read_text()))
        try:
            return cls.from_dict(cfg, str(folder), _eos_ids(folder, cfg), quantization)
        except KeyError as e:
            raise ValueError(f"{config_file} has no {e.args[0]!r}, which {archs[0]} needs") from None

    @classmethod
    def from_dict(
        cls,
        cfg: dict[str, Any],
        path: str = "",
        eos_token_ids: tuple[int, ...] = (),
        quantization: str | None = None,
    ) -> ModelConfig:
        """From config.json's contents (transformers' defaults for the keys it may leave out)."""
        architecture = (cfg.get("architectures") or [""])[0]
        cfg = {**_FAMILY_DEFAULTS.get(architecture, {}), **cfg}
        num_heads = cfg["num_attention_heads"]
        rope, rope_local = _ropes(cfg)
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            path=path,
            architecture=architecture,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            sliding_window=_sliding_window(cfg),
            eos_token_ids=eos_token_ids,
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            rope=rope,
            rope_local=rope_local,
            qkv_bias=bool(cfg.get("qkv_bias", attention_bias)),
            hidden_act=str(cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"),
            layer_types=_layer_types(cfg),
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
            moe=_moe(cfg),
            quantization=parse_quantization(cfg.get("quantization_config"), quantization),
            is_matryoshka=bool(cfg.get("is_matryoshka", False)),
            matryoshka_dimensions=tuple(int(d) for d in cfg.get("matryoshka_dimensions") or ()),
        )


def unsupported_architecture(architecture: str, supported: Collection[str]) -> str:
    return f"architecture {architecture!r} is not supported (supported: {', '.join(sorted(supported))})"


def rope_parameters(cfg: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """One flat dict describing a rotary embedding: `rope_type`, `rope_theta`, the scaling's own keys,
    `partial_rotary_factor` and `max_position_embeddings` (the config's, for the scalings that need it).

    Reads transformers-5 `rope_parameters` (flat, or nested per layer type as Gemma 3 saves it: then
    `layer_type` picks one) or the older `rope_theta` / `rope_scaling`. A type outside ROPE_TYPES is a
    ValueError that names it."""
    nested = cfg.get("rope_parameters") or {}
    if layer_type is not None and isinstance(nested.get(layer_type), dict):
        params = dict(nested[layer_type])
    elif nested and not any(isinstance(v, dict) for v in nested.values()):
        params = dict(nested)
    else:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = kind = _ROPE_ALIASES.get(kind, kind)
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    params.setdefault("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    max_positions = int(cfg.get("max_position_embeddings", 2048))
    params["max_position_embeddings"] = max_positions
    if kind in _NEEDS_ORIGINAL_LENGTH:
        # Phi-3 keeps the pre-training length at the top level, and transformers gives that one priority.
        original = cfg.get("original_max_position_embeddings")
        params["original_max_position_embeddings"] = int(
            original or params.get("original_max_position_embeddings") or max_positions
        )
    return params


def _ropes(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(rope, rope_local): Gemma 3 nests both under rope_parameters by layer type (transformers 5), or
    names the local base apart (rope_local_base_freq); every other model has one rotary embedding."""
    nested = cfg.get("rope_parameters") or {}
    if isinstance(nested.get(FULL), dict) or isinstance(nested.get(SLIDING), dict):
        return rope_parameters(cfg, FULL), rope_parameters(cfg, SLIDING)
    local = None
    if cfg.get("rope_local_base_freq") is not None:
        local_cfg = {"max_position_embeddings": cfg.get("max_position_embeddings", 2048)}
        local = rope_parameters({**local_cfg, "rope_theta": cfg["rope_local_base_freq"]})
    return rope_parameters(cfg), local


def _layer_types(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    if cfg.get("layer_types"):
        return tuple(cfg["layer_types"])
    pattern = cfg.get("sliding_window_pattern")
    if not pattern:
        return None
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(cfg["num_hidden_layers"]))


def _moe(cfg: dict[str, Any]) -> MoeConfig | None:
    """The experts, if any: Qwen-MoE names their count num_experts, Mixtral (and transformers 5)
    num_local_experts."""
    num_experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    if num_experts == 0:
        return None
    return MoeConfig(
        num_experts=num_experts,
        num_experts_per_tok=int(cfg["num_experts_per_tok"]),
        intermediate_size=int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"]),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
        decoder_sparse_step=int(cfg.get("decoder_sparse_step") or 1),
        mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()),
    )


def _sliding_window(cfg: dict[str, Any]) -> int | None:
    """Qwen2 checkpoints name a window but attend fully unless use_sliding_window is set."""
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    return int(window) if window else None


def _eos_ids(folder: Path, cfg: dict[str, Any]) -> tuple[int, ...]:
    """EOS ids from generation_config.json when present (it may list several), else config.json."""
    ids: list[int] = []
    gen_file = folder / "generation_config.json"
    sources = [json.loads(gen_file.read_text())] if gen_file.is_file() else []
    sources.append(cfg)
    for source in sources:
        value = source.get("eos_token_id")
        if value is None:
            continue
        for token in value if isinstance(value, list) else [value]:
            if token not in ids:
                ids.append(int(token))
        if ids:
            break
    return tuple(ids)
