"""Fixtures of the structured-output tests: a tiny random Llama with the default model's real tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llm(tiny_chat_model_dir):
    """An offline LLM on the tiny random model (CPU, float32), built once."""
    from engine_service import LLM

    return LLM(str(tiny_chat_model_dir), device="cpu", dtype="float32", max_model_len=512, seed=0)
