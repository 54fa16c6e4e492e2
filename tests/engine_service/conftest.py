"""Fixtures of the engine-service tests: the default model's tokenizer and the scripted tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_service.scripted_model import SCRIPTS, write_scripted_model


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def scripts(tokenizer) -> dict[str, list[int]]:
    """Each script's token ids (its first token is the prompt that starts it)."""
    return {name: tokenizer.encode(text) for name, (text, _) in SCRIPTS.items()}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir, tokenizer, scripts) -> Path:
    """The scripted Llama (see scripted_model.py); with load_format="dummy", a tiny random model."""
    return write_scripted_model(
        tmp_path_factory.mktemp("tiny-scripted-llama"), tokenizer, scripts, default_model_dir
    )
