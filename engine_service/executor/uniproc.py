"""UniProcExecutor: the model in this process (tensor parallelism 1)."""

from __future__ import annotations

from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.executor.executor import Executor
from engine_service.worker.model_runner import GrammarMask, ModelRunner
from engine_service.worker.sampler import SampleResult


class UniProcExecutor(Executor):
    """The model in this process: a thin pass-through to one ModelRunner, no cost per step."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.device = runner.device
        self.supports_async = True

    def launch(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None):
        return self.runner.launch(out, grammar_mask)

    @property
    def kv_bytes_per_block(self) -> int:
        return self.runner.kv_bytes_per_block

    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        return self.runner.profile_num_kv_blocks(gpu_memory_utilization, max_num_batched_tokens)

    def allocate_kv_cache(self, num_blocks: int, num_sliding_blocks: int | None = None) -> None:
        self.runner.allocate_kv_cache(num_blocks, num_sliding_blocks)

    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        self.runner.capture_cuda_graphs(max_num_seqs, max_model_len)

    def execute(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> SampleResult:
        return self.runner.execute(out, grammar_mask)

    def start_profile(self, trace_dir: str) -> None:
        self.runner.start_profile(trace_dir)

    def stop_profile(self) -> list[str]:
        return [self.runner.stop_profile()]

    def check_alive(self) -> None:
        pass  # nothing here can die on its own

    def shutdown(self) -> None:
        pass  # the model and its cache go with this process
