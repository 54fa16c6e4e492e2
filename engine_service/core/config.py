"""EngineConfig: the one frozen configuration of an engine, built once (from flags or LLM kwargs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    model: str  # a Hugging Face folder (already resolved: see pagoda.models.resolve_model)
    served_model_name: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    block_size: int = 16
    max_num_seqs: int = 512
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    num_kv_blocks: int | None = None  # default: from gpu_memory_utilization on GPU, 4096 tokens' worth on CPU
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_gib: float = 1.0  # CPU KV-cache size when num_kv_blocks is not given
    load_format: str = "auto"  # auto | dummy (random weights)
    seed: int = 0
    enforce_eager: bool = False  # no CUDA graphs
    # Schedule step n+1 while step n runs on the device (None: on for a single-process CUDA engine).
    async_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    # Tensor parallelism on GPUs that reach each other (peer access): decode-sized all-reduces over symmetric
    # memory, the row-parallel ones fused with the next residual add + RMSNorm (parallel/all_reduce.py);
    # NCCL for the rest, and for everything when off (RESULTS.md, tensor parallelism).
    custom_all_reduce: bool = True
    # Programmatic dependent launch of the Triton kernels on sm_90+ GPUs: each kernel is launched while the
    # one before it drains and waits on the device for it (ops/triton_pdl.py). No effect elsewhere.
    pdl: bool = True
    max_logprobs: int = 20
    # What the engine serves: auto (an embedding model when the folder is one: core/pooling.py), generate,
    # or pooling (embeddings: one prefill per input, pooled hidden states).
    runner: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (
                self.device in ("auto", "cpu", "cuda"),
                f"device must be auto, cpu or cuda, got {self.device!r}",
            ),
            (
                self.dtype in ("auto", "float32", "bfloat16", "float16"),
                f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}",
            ),
            (
                self.block_size in (1, 2, 4, 8, 16, 32, 64, 128, 256),
                f"block_size must be a power of two from 1 to 256, got {self.block_size}",
            ),
            (self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}"),
            (
                self.max_num_batched_tokens >= 1,
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}",
            ),
            (
                0.0 < self.gpu_memory_utilization <= 1.0,
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
            ),
            (
                self.load_format in ("auto", "dummy"),
                f"load_format must be auto or dummy, got {self.load_format!r}",
            ),
            (
                self.num_kv_blocks is None or self.num_kv_blocks >= 1,
                f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}",
            ),
            (
                self.runner in ("auto", "generate", "pooling"),
                f"runner must be auto, generate or pooling, got {self.runner!r}",
            ),
            (
                self.tensor_parallel_size >= 1,
                f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
