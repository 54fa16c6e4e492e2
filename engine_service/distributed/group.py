"""Setting up the tensor-parallel group: shape checks, the workers' environment, torch.distributed init."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from engine_service.core.model_config import ModelConfig

# NVLink multicast (NVLS) stays off unless the engine's own environment turns it on. On shared GPU hosts a
# program that uses multicast can take the host's GPUs out of service for everyone (see the device
# machines' KINDS.md); our all-reduces are small and latency-bound, where NVLS gains little.
NCCL_DEFAULTS = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def check_tp_size(model_config: ModelConfig, tp_size: int, device: str) -> None:
    """Raises ValueError, naming the dimension, when the model cannot be split `tp_size` ways here."""
    splits = [
        ("num_attention_heads", model_config.num_heads),
        ("intermediate_size", model_config.intermediate_size),
    ]
    for name, size in splits:
        if size % tp_size:
            raise ValueError(f"tensor_parallel_size {tp_size} must divide the model's {name} ({size})")
    kv = model_config.num_kv_heads
    if kv % tp_size and tp_size % kv:  # fewer KV heads than ranks: each is replicated on tp_size / kv ranks
        raise ValueError(
            f"tensor_parallel_size {tp_size} must divide the model's num_key_value_heads ({kv}) or be a "
            "multiple of it"
        )
    if device == "cuda" and torch.cuda.device_count() < tp_size:
        visible = torch.cuda.device_count()
        raise ValueError(f"tensor_parallel_size {tp_size} needs {tp_size} GPUs, but {visible} are visible")


def worker_env(base: dict[str, str], num_threads: int) -> dict[str, str]:
    """A worker's environment: the engine's, NVLink multicast off unless set, its share of the CPU threads."""
    env = {**NCCL_DEFAULTS, **base}
    env.setdefault("OMP_NUM_THREADS", str(num_threads))
    return env


def init_distributed(
    rank: int, world_size: int, store_port: int, device: torch.device, timeout_s: float
) -> None:
    """Join the group through the driver's TCPStore on 127.0.0.1: NCCL on GPUs, gloo on CPU.

    `timeout_s` bounds every collective: a rank whose peer died stops waiting (NCCL's watchdog then ends
    the process) instead of hanging for ever.
    """
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", store_port, world_size, is_master=False, timeout=timeout)
    if device.type == "cuda":
        dist.init_process_group(
            "nccl", store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device
        )
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)


def cpu_threads_per_rank(world_size: int) -> int:
    """An equal share of the cores this process may run on (its affinity, not the whole host's count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // world_size)
