"""Embedding models: whether an engine pools, and how, from the model folder (pure Python).

An engine runs as an embedding model (task "embed") when asked (`EngineConfig.runner = "pooling"`) or, with
`runner = "auto"`, when the folder is a sentence-transformers model (modules.json with a Pooling module, as
Qwen3-Embedding and gte-Qwen2 ship) or its architecture is a bare decoder (`...Model`, as e5-mistral's
MistralModel: recognised, but its architecture is not in the model registry yet, so ModelConfig refuses
it). Its requests run one prefill each: the final norm's hidden states of the prompt are pooled
and L2-normalised, and the sequence ends there (its KV blocks are freed at once).

    pooling (1_Pooling/config.json)   what it takes
    pooling_mode_lasttoken            the last prompt token's state (decoders: it has seen every token)
    pooling_mode_mean_tokens          the mean over every prompt position (skips the prefix cache:
                                      a cached block has no hidden states; core/prompt_logprobs.py)
    pooling_mode_cls_token            the first token's state
    (no sentence-transformers config) the last token, as vLLM pools decoder embeddings

Matryoshka models (config.json `is_matryoshka` or `matryoshka_dimensions`, as vLLM reads them) may be
shortened to their leading dimensions (renormalised); others refuse `dimensions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine_service.core.sampling_params import SamplingParams

POOLING_MODES = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}


@dataclass(frozen=True)
class PoolingConfig:
    method: str  # last | mean | cls
    normalize: bool
    matryoshka: bool
    matryoshka_dimensions: tuple[int, ...]  # empty: any length up to the hidden size

    @property
    def reads_every_position(self) -> bool:
        """Whether pooling needs positions a prefix-cache hit would skip (all of them, or the first)."""
        return self.method in ("mean", "cls")


def resolve_task(runner: str, folder: str | Path, architecture: str) -> str:
    """ "generate" or "embed" for `runner` auto | generate | pooling."""
    if runner == "pooling":
        return "embed"
    if runner == "generate":
        return "generate"
    st_pooling = _pooling_module(Path(folder)) is not None
    return "embed" if st_pooling or architecture.endswith("Model") else "generate"


def pooling_config(
    folder: str | Path, is_matryoshka: bool = False, matryoshka_dimensions: tuple[int, ...] = ()
) -> PoolingConfig:
    """How the model in `folder` pools; the Matryoshka keys come from its config.json (ModelConfig)."""
    folder = Path(folder)
    method, normalize = "last", True
    module = _pooling_module(folder)
    if module is not None:
        settings = _read_json(folder / module / "config.json")
        method = next((m for key, m in POOLING_MODES.items() if settings.get(key)), None)
        if method is None:
            raise ValueError(
                f"{folder / module / 'config.json'} asks for a pooling this engine does not do; it pools "
                f"by {', '.join(POOLING_MODES)}"
            )
        modules = _read_json(folder / "modules.json")
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    dims = tuple(matryoshka_dimensions)
    return PoolingConfig(method, normalize, is_matryoshka or bool(dims), dims)


def _pooling_module(folder: Path) -> str | None:
    """The folder of the Pooling module that modules.json lists, if any."""
    for module in _read_json(folder / "modules.json") or []:
        if str(module.get("type", "")).endswith("Pooling"):
            return module.get("path") or "1_Pooling"
    return None


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else {}


def pooling_params() -> SamplingParams:
    """What an embedding request runs as: its prompt, then one (dropped) position that ends it."""
    return SamplingParams(n=1, max_tokens=1, temperature=0.0, ignore_eos=True)
