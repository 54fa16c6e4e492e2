"""The engine service: a model on its device, a paged KV cache and a continuous-batching loop.

`LLM` and `SamplingParams` are the offline API; `engine_service.main` runs the gRPC service.
"""

from engine_service.llm import LLM
from engine_service.outputs import CompletionOutput, RequestOutput
from engine_service.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
