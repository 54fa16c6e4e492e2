"""Model architectures by the name config.json gives them, and what the engine asks of one before it builds
it: can the class run what the checkpoint uses, and how long a context does the model serve.

A model class is built as `cls(model_config, tp_rank, tp_size)` (core/model_config.py: ModelConfig) and
answers `max_context(model_config)` and `fp8_checkpoints` as LlamaForCausalLM does. What config.json alone
rules out (an unknown architecture, quantization method or rope type) is refused as it is parsed
(ModelConfig.from_dir with supported=MODELS); check_supported adds what only the class knows."""

from __future__ import annotations

from torch import nn

from engine_service.core.model_config import ModelConfig, unsupported_architecture
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
        raise ValueError(unsupported_architecture(architecture, MODELS)) from None


def register_model(architecture: str, cls: type[nn.Module]) -> None:
    """Serve the `architecture` that config.json names with `cls`, a model defined outside this package (as
    vLLM's ModelRegistry.register_model): built as `cls(model_config, tp_rank, tp_size)`, with
    LlamaForCausalLM's class interface (subclass it, or give max_context and fp8_checkpoints)."""
    MODELS[architecture] = cls


def check_supported(config: ModelConfig) -> None:
    """Raise one ValueError sentence when the model class cannot run what the checkpoint uses (FP8 weights,
    for a registered class that sets fp8_checkpoints False), before any weight is read."""
    cls = model_class(config.architecture)
    quant = config.quantization
    if quant is not None and not quant.online and not cls.fp8_checkpoints:
        raise ValueError(
            f"FP8 checkpoints ({quant.method} format) of {config.architecture} are not supported: use its "
            "bf16 checkpoint"
        )


def max_context(config: ModelConfig) -> int:
    """The longest context the model serves (its rope scaling's, capped at a window it does not honour)."""
    return model_class(config.architecture).max_context(config)
