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
