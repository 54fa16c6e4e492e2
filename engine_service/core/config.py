"""EngineConfig: the one frozen configuration of an engine, built once (from flags or LLM kwargs).

Each setting is defined here once, with its help: `pagoda engine` and `pagoda bench throughput` make their
flags from these fields (pagoda/cli_args.py), and `LLM(**kwargs)` takes the same names. A new setting is a
new field with `metadata={"help": ...}`; its flag follows.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

from engine_service.core.sampling_params import MAX_LOGPROBS

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineConfig:
    # A Hugging Face folder, already resolved (pagoda.models.resolve_model): `--model` takes more forms.
    model: str = field(metadata={"cli": False})
    served_model_name: str | None = field(
        default=None, metadata={"help": "the name clients use (default: from --model)"}
    )
    device: Device = field(default="auto", metadata={"help": "auto: cuda when a GPU is visible, else cpu"})
    dtype: Dtype = field(
        default="auto", metadata={"help": "weights and activations (auto: bfloat16 on cuda, float32 on cpu)"}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "longest prompt + completion (default: the model's context length)"}
    )
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block (a power of two)"})
    max_num_seqs: int = field(default=512, metadata={"help": "most sequences in one batch"})
    max_num_batched_tokens: int = field(default=8192, metadata={"help": "token budget of one step"})
    enable_prefix_caching: bool = field(
        default=True,
        metadata={
            "flag": "prefix-caching",
            "help": "keep full KV blocks cached and reuse them for prompts that share a prefix",
        },
    )
    num_kv_blocks: int | None = field(
        default=None,
        metadata={
            "help": "KV-cache blocks (default: from --gpu-memory-utilization on a GPU, --cpu-kv-cache-gib "
            "on CPU)"
        },
    )
    gpu_memory_utilization: float = field(
        default=0.90, metadata={"help": "share of the GPU's memory the engine may use, KV cache included"}
    )
    cpu_kv_cache_gib: float = field(
        default=1.0, metadata={"help": "CPU KV-cache size in GiB, when --num-kv-blocks is not given"}
    )
    load_format: Literal["auto", "dummy"] = field(default="auto", metadata={"help": "dummy: random weights"})
    seed: int = field(
        default=0, metadata={"help": "seeds random weights and the draws of requests that give no seed"}
    )
    enforce_eager: bool = field(default=False, metadata={"help": "no CUDA graphs"})
    async_scheduling: bool | None = field(
        default=None,
        metadata={
            "help": "schedule step n+1 while step n runs on the device (default: on for a single-process "
            "CUDA engine)"
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs the model is split across"})
    # Tensor parallelism on GPUs that reach each other (peer access): decode-sized all-reduces over symmetric
    # memory, the row-parallel ones fused with the next residual add + RMSNorm (distributed/all_reduce.py);
    # NCCL for the rest, and for everything when off (RESULTS.md, tensor parallelism).
    custom_all_reduce: bool = field(
        default=True,
        metadata={
            "help": "tensor parallelism: decode-sized all-reduces over symmetric memory, fused with the next "
            "RMSNorm where they can be (--no-custom-all-reduce: all through NCCL)"
        },
    )
    # Programmatic dependent launch of the Triton kernels on sm_90+ GPUs: each kernel is launched while the
    # one before it drains and waits on the device for it (ops/triton_pdl.py). No effect elsewhere.
    pdl: bool = field(
        default=True,
        metadata={
            "help": "programmatic dependent launch of the Triton kernels on sm_90+ GPUs: each one launches "
            "while the one before it drains (--no-pdl: plain stream order)"
        },
    )
    max_logprobs: int = field(
        default=MAX_LOGPROBS,
        metadata={"help": f"most top logprobs a request may ask for (at most {MAX_LOGPROBS})"},
    )
    runner: Literal["auto", "generate", "pooling"] = field(
        default="auto",
        metadata={
            "help": "what to serve: generation, or embeddings (pooling: one prefill per input, the Embed "
            "RPC); auto: embeddings for a sentence-transformers folder or a bare ...Model architecture"
        },
    )
    # FP8 checkpoints (fp8, compressed-tensors, modelopt) are recognised from config.json either way
    # (ModelConfig.quantization); this quantizes a 16/32-bit one as it loads (layers/quantization).
    quantization: Literal["fp8"] | None = field(
        default=None,
        metadata={
            "help": "fp8: quantize a 16/32-bit checkpoint's linear layers to FP8 (e4m3) as it loads: "
            "per-channel weight scales, dynamic per-token activation scales (FP8 checkpoints run as FP8 "
            "without it)"
        },
    )
    kv_cache_dtype: Literal["auto", "fp8"] = field(
        default="auto",
        metadata={
            "help": "KV-cache element type: auto (the model's dtype) or fp8 (e4m3 with the checkpoint's "
            "per-tensor k/v scales, 1.0 where it has none): twice the tokens of a 16-bit cache"
        },
    )

    def __post_init__(self) -> None:
        checks = [
            *_choice_checks(self),
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
                self.num_kv_blocks is None or self.num_kv_blocks >= 1,
                f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}",
            ),
            (
                self.tensor_parallel_size >= 1,
                f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}",
            ),
            (
                0 <= self.max_logprobs <= MAX_LOGPROBS,
                f"max_logprobs must be in [0, {MAX_LOGPROBS}], got {self.max_logprobs}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _choice_checks(config) -> list[tuple[bool, str]]:
    """(ok, message) for each Literal-typed field (`Literal[...] | None` too): its value is one of the
    Literal's (or None)."""
    hints = typing.get_type_hints(type(config))
    out = []
    for f in fields(config):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = True
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            value = getattr(config, f.name)
            ok = value in choices or (optional and value is None)
            listed = " or ".join(filter(None, (", ".join(choices[:-1]), choices[-1])))
            unset = " (or unset)" if optional else ""
            out.append((ok, f"{f.name} must be {listed}{unset}; got {value!r}"))
    return out
