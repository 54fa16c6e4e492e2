"""Model architectures by the name config.json gives them."""

from __future__ import annotations

from torch import nn

from engine_service.models.llama import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)

MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODELS[architecture]
    except KeyError:
        supported = ", ".join(sorted(MODELS))
        raise ValueError(f"architecture {architecture!r} is not supported (supported: {supported})") from None


def register_model(architecture: str, cls: type[nn.Module]) -> None:
    """Serve the `architecture` that config.json names with `cls`, a model defined outside this package (as
    vLLM's ModelRegistry.register_model): it is built as `cls(hf_config, tp_rank, tp_size)`."""
    MODELS[architecture] = cls
