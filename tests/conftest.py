"""Shared fixtures. Keep this small: fixtures used by one area live next to its tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import torch

    # 2 shared cores: more intra-op threads slow everyone down (see FACTS.md).
    torch.set_num_threads(1)
    # Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set before any
    # @triton.jit function is defined, and any test module may import a kernel: so set it here, first.
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
except ImportError:
    pass


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default SmolLM2 model as a Hugging Face folder (converted once, cached on disk)."""
    from pagoda.models import resolve_model

    return resolve_model(None)


# What a model folder needs for text in and text out: the tokenizer and its chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random Llama (hidden 64, 2 layers, CPU speed) with the default model's real tokenizer and chat
    template, so that services built on it take and return text."""
    import json
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    for name in TOKENIZER_FILES:
        if (default_model_dir / name).is_file():
            shutil.copy(default_model_dir / name, folder / name)
    vocab = json.loads((default_model_dir / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
