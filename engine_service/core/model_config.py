"""What the engine needs to know about a model, read once from its Hugging Face folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    path: str
    architecture: str
    hf_config: dict[str, Any]
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...]
    torch_dtype: str  # dtype the checkpoint was saved in

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        folder = Path(path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder: it has no config.json")
        cfg = json.loads(config_file.read_text())
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError(f"{config_file} names no architecture ('architectures' is empty)")
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        return cls(
            path=str(folder),
            architecture=archs[0],
            hf_config=cfg,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            eos_token_ids=_eos_ids(folder, cfg),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
        )


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
