"""The engine service: a model on its device, a paged KV cache and a continuous-batching loop.

`LLM` and `SamplingParams` are the offline API; `engine_service.server.main` runs the gRPC service. The names
below load lazily, so that `python -m engine_service` can bind its port before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "LLM": "engine_service.engine.llm",
    "SamplingParams": "engine_service.core.sampling_params",
    "StructuredOutputsParams": "engine_service.core.structured_outputs",
    "RequestOutput": "engine_service.core.outputs",
    "CompletionOutput": "engine_service.core.outputs",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from engine_service.core.outputs import CompletionOutput, RequestOutput  # noqa: F401
    from engine_service.core.sampling_params import SamplingParams  # noqa: F401
    from engine_service.core.structured_outputs import StructuredOutputsParams  # noqa: F401
    from engine_service.engine.llm import LLM  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine_service' has no attribute {name!r}")
