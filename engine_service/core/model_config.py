"""ModelConfig: what the engine and the models know about a model, read once from its Hugging Face folder.

`config.json` is parsed here and nowhere else in the engine: the engine, the tensor-parallel checks, the
model classes and the rotary embedding read the typed fields below (tensor-parallel workers get this
object from the driver, pickled). A model family that needs a key not here adds a field, with the same
defaults transformers uses. There is no raw `hf_config`: every key the engine reads has a name and a type.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    rope: dict[str, Any]  # rope_theta, rope_type (default | linear | llama3) and that scaling's own keys

    @classmethod
    def from_dir(cls, path: str | Path, supported: Collection[str] | None = None) -> ModelConfig:
        """`supported`: the architectures the caller can build (the model registry's), checked first, so
        that an unsupported model is named as such rather than by a key it lacks."""
        folder = Path(path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder: it has no config.json")
        cfg = json.loads(config_file.read_text())
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError(f"{config_file} names no architecture ('architectures' is empty)")
        if supported is not None and archs[0] not in supported:
            names = ", ".join(sorted(supported))
            raise ValueError(f"architecture {archs[0]!r} is not supported (supported: {names})")
        try:
            return cls.from_dict(cfg, str(folder), _eos_ids(folder, cfg))
        except KeyError as e:
            raise ValueError(f"{config_file} has no {e.args[0]!r}, which {archs[0]} needs") from None

    @classmethod
    def from_dict(
        cls, cfg: dict[str, Any], path: str = "", eos_token_ids: tuple[int, ...] = ()
    ) -> ModelConfig:
        """From config.json's contents (transformers' defaults for the keys it may leave out)."""
        num_heads = cfg["num_attention_heads"]
        return cls(
            path=path,
            architecture=(cfg.get("architectures") or [""])[0],
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
            attention_bias=bool(cfg.get("attention_bias", False)),
            sliding_window=_sliding_window(cfg),
            eos_token_ids=eos_token_ids,
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            rope=rope_parameters(cfg),
        )


def rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """(theta, scaling) from transformers-5 `rope_parameters`, or the older `rope_theta` / `rope_scaling`."""
    params = dict(cfg.get("rope_parameters") or {})
    if not params:
        params = dict(cfg.get("rope_scaling") or {})
        params["rope_theta"] = cfg.get("rope_theta", 10000.0)
    params.setdefault("rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


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
