"""make_executor: one process for tensor parallelism 1, one worker process per rank above it."""

from __future__ import annotations

import torch

from engine_service.core.config import EngineConfig
from engine_service.core.model_config import ModelConfig
from engine_service.core.pooling import PoolingConfig
from engine_service.executor.executor import Executor
from engine_service.executor.multiproc import MultiProcExecutor
from engine_service.executor.uniproc import UniProcExecutor
from engine_service.worker.model_runner import ModelRunner
from engine_service.worker.tp_worker import WorkerSpec


def make_executor(
    config: EngineConfig,
    model_config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    pooling: PoolingConfig | None = None,
) -> Executor:
    """`pooling`: an embedding model's pooling (tensor parallelism 1 only, for now)."""
    if config.tensor_parallel_size == 1:
        runner = ModelRunner(
            model_config,
            device,
            dtype,
            config.block_size,
            config.load_format,
            config.seed,
            pdl=config.pdl,
            pooling=pooling,
            kv_cache_dtype=config.kv_cache_dtype,
        )
        return UniProcExecutor(runner)
    if pooling is not None:
        raise ValueError("embedding models run at tensor_parallel_size 1 (pooling is not sharded yet)")

    spec = WorkerSpec(
        model=model_config,
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        block_size=config.block_size,
        load_format=config.load_format,
        seed=config.seed,
        tp_size=config.tensor_parallel_size,
        custom_all_reduce=config.custom_all_reduce,
        pdl=config.pdl,
        kv_cache_dtype=config.kv_cache_dtype,
    )
    return MultiProcExecutor(spec, model_config)
