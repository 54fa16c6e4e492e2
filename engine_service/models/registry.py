"""Model architectures by the name config.json gives them, and what the engine asks of one before it builds
it: is everything the checkpoint uses supported, and how long a context does the model serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from engine_service.layers.quantization import quant_config
from engine_service.layers.rotary import check_rope_type
from engine_service.models.gemma2 import Gemma2ForCausalLM
from engine_service.models.gemma3 import Gemma3ForCausalLM
from engine_service.models.llama import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from engine_service.models.mixtral import MixtralForCausalLM
from engine_service.models.phi3 import Phi3ForCausalLM
from engine_service.models.qwen2_moe import Qwen2MoeForCausalLM
from engine_service.models.qwen3_moe import Qwen3MoeForCausalLM

MODELS: dict[str, type[nn.Module]] = {
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


def model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODELS[architecture]
    except KeyError:
        supported = ", ".join(sorted(MODELS))
        raise ValueError(f"architecture {architecture!r} is not supported (supported: {supported})") from None


def check_supported(
    architecture: str, hf_config: dict[str, Any], folder: str | Path | None, quantization: str | None
) -> None:
    """Raise one ValueError sentence naming the first thing the checkpoint uses that Pagoda cannot run (its
    architecture, quantization method or rope type), before any weight is read."""
    cls = model_class(architecture)
    quant = quant_config(hf_config, folder, quantization)
    if quant is not None and not quant.online and not cls.fp8_checkpoints:
        raise ValueError(
            f"FP8 checkpoints ({quant.method} format) of {architecture} are not supported yet (FP8 expert "
            "weights): use its bf16 checkpoint, with quantization='fp8' to quantize the attention layers"
        )
    for params in cls.rope_sets(hf_config):
        check_rope_type(params)


def max_context(architecture: str, hf_config: dict[str, Any]) -> int:
    """The longest context the model serves (its rope scaling's, capped at a window it does not honour)."""
    return model_class(architecture).max_context(hf_config)
