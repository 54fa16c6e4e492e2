"""Fixtures of the observability tests: a tiny random Llama with the default model's tokenizer, and the
whole stack running it (obs_stack.Stack), started once per session."""

from __future__ import annotations

import pytest
from obs_stack import Stack


@pytest.fixture(scope="session")
def obs_model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


@pytest.fixture(scope="session")
def stack(obs_model_dir, tmp_path_factory):
    s = Stack(obs_model_dir, tmp_path_factory.mktemp("obs-logs"))
    yield s
    codes = s.stop()
    assert all(code == 0 for code in codes.values()), codes
