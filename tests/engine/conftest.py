"""Tiny random models of every supported architecture, made with transformers and saved as safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    eos_token_id=2,
    bos_token_id=1,
)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        **COMMON,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=True,
    ),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**{**COMMON, "num_key_value_heads": 1}, head_dim=32),
}
MODEL_CLASSES = {
    "llama": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
}


def make_tiny_model(folder: Path, arch: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = MODEL_CLASSES[arch](CONFIGS[arch]()).eval()
    if arch == "qwen2":  # random biases, so that the q/k/v bias path is really exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_model_factory():
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, tuple[Path, transformers.PreTrainedModel]]:
    out = {}
    for arch in CONFIGS:
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        out[arch] = (folder, make_tiny_model(folder, arch))
    return out


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"][0]
