"""Fixtures of the observability tests: a tiny random Llama with the default model's tokenizer, and the
whole stack running it (obs_stack.Stack), started once per session."""

from __future__ import annotations

import json
import shutil

import pytest
from obs_stack import Stack

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def obs_model_dir(tmp_path_factory, default_model_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-obs-llama")
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


@pytest.fixture(scope="session")
def stack(obs_model_dir, tmp_path_factory):
    s = Stack(obs_model_dir, tmp_path_factory.mktemp("obs-logs"))
    yield s
    codes = s.stop()
    assert all(code == 0 for code in codes.values()), codes
