"""The executor: what the Engine runs the model through, on one device or across tensor-parallel ranks.

    Engine ── schedule ──▶ executor.launch(SchedulerOutput) ──▶ .result(): SampleResult
                              UniProcExecutor    one ModelRunner in this process (TP=1)
                              MultiProcExecutor  one worker process per rank (multiproc.py)

The Engine keeps the scheduler, the block manager and the requests; the executor keeps the model, its KV
cache and the sampler. Start-up goes: kv_bytes_per_block / profile_num_kv_blocks (sizing),
allocate_kv_cache, capture_cuda_graphs; then one launch per step. A step's SchedulerOutput says what
changed since the last one (new, resumed, preempted and finished sequences, new blocks): the model runner
keeps its persistent batch from it, so the executor keeps nothing per sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.worker.model_runner import GrammarMask
from engine_service.worker.sampler import SampleResult


class _Done:
    """A step that already ran (executors that cannot overlap steps)."""

    def __init__(self, result: SampleResult):
        self._result = result

    def result(self) -> SampleResult:
        return self._result


class Executor(ABC):
    device: torch.device  # the ranks' device type (a TP engine's driver holds no GPU itself)
    # Whether launch() returns before the step's tokens reach the host, so that the engine can schedule
    # the next step meanwhile (the placeholders of the sampled tokens are filled on the device).
    supports_async: bool = False

    def launch(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None):
        """Queue a step; `.result()` of what is returned gives its SampleResult. `grammar_mask` is called
        before the step's draw, after its forward pass is queued where the executor can overlap them
        (ModelRunner.launch)."""
        return _Done(self.execute(out, grammar_mask))

    @property
    @abstractmethod
    def kv_bytes_per_block(self) -> int:
        """Bytes one KV block takes on each rank (all layers, K and V)."""

    @abstractmethod
    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        """KV blocks that fit on every rank's GPU after the weights and a peak-activation pass."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, num_sliding_blocks: int | None = None) -> None:
        """`num_blocks` per layer; a hybrid model's sliding layers `num_sliding_blocks` (kv_cache_groups)."""

    @abstractmethod
    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None: ...

    @abstractmethod
    def execute(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> SampleResult:
        """One forward pass over the scheduled tokens; a token for each sequence that caught up."""

    @abstractmethod
    def start_profile(self, trace_dir: str) -> None:
        """torch.profiler on every rank (host and device) until stop_profile (LLM.start_profile)."""

    @abstractmethod
    def stop_profile(self) -> list[str]:
        """Stop the profile; every rank writes its Chrome trace to trace_dir. Returns their paths."""

    @abstractmethod
    def check_alive(self) -> None:
        """Raises if the executor can no longer run steps (a worker process died)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Releases the devices (stops worker processes). Idempotent."""
