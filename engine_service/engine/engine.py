"""The engine: requests in, one scheduler step + forward pass + sampling per `step()`, updates out.

The offline `LLM` and the gRPC service both drive this same loop. It is not thread-safe: whoever owns
it calls add_request / abort / step from one thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine_service.core.block_manager import BlockManager
from engine_service.core.config import EngineConfig
from engine_service.core.generation_config import sampling_defaults
from engine_service.core.kv_cache_groups import KVCacheGroups, kv_cache_groups, sliding_demand, split_blocks
from engine_service.core.model_config import ModelConfig
from engine_service.core.outputs import SequenceUpdate
from engine_service.core.pooling import pooling_config, pooling_params, resolve_task
from engine_service.core.prompt_logprobs import PromptLogprobsAccumulator, wants_prompt_logprobs
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler
from engine_service.core.sequence import Sequence, SequenceStatus
from engine_service.core.sliding_blocks import SlidingBlocks
from engine_service.engine import updates_codec
from engine_service.engine.tokenizer import load_tokenizer
from engine_service.executor.executor import Executor
from engine_service.executor.factory import make_executor
from engine_service.models.registry import MODELS, check_supported, max_context, model_class
from engine_service.structured.manager import StructuredOutputManager
from engine_service.worker.model_runner import resolve_device, resolve_dtype
from engine_service.worker.sampler import SampleResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    served_model_name: str
    model_path: str
    architecture: str
    max_model_len: int
    block_size: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    dtype: str
    device: str
    tensor_parallel_size: int
    max_num_seqs: int
    num_kv_blocks: int
    # Sampling fields the model's generation_config.json sets: the defaults of requests that leave them unset.
    sampling_defaults: dict = field(default_factory=dict)
    task: str = "generate"  # generate | embed (core/pooling.py)
    embedding_size: int = 0
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_free_blocks: int
    num_total_blocks: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache
    num_prefix_hit_tokens: int = 0  # of which were found there
    num_steps: int = 0  # steps launched (batches through the model) since start


class Engine:
    def __init__(self, config: EngineConfig, executor_factory=make_executor):
        """`executor_factory(config, model_config, device, dtype, pooling)` builds the executor:
        make_executor, or a benchmark rig's stand-in for the device (benchmarks/serving_rig.py)."""
        self.config = config
        # Whatever the checkpoint uses that Pagoda cannot run fails here, before any weight is read.
        self.model_config = mc = ModelConfig.from_dir(config.model, MODELS, config.quantization)
        check_supported(mc)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        self.max_model_len = self._max_model_len(config, mc)
        self.task = resolve_task(config.runner, mc.path, mc.architecture)
        self.pooling = (
            pooling_config(mc.path, mc.is_matryoshka, mc.matryoshka_dimensions)
            if self.task == "embed"
            else None
        )
        # The model, its KV cache and the sampler: here (TP=1) or in one worker process per rank.
        self.executor: Executor = executor_factory(config, mc, device, dtype, self.pooling)
        # A hybrid model's sliding-window layers keep only their window's blocks, in a pool of their own.
        groups = kv_cache_groups(
            mc.layer_types, mc.sliding_window, model_class(mc.architecture).honours_sliding_window
        )
        num_sliding_blocks = None
        try:
            num_blocks = self._num_kv_blocks(config)
            if groups is not None:
                num_blocks, num_sliding_blocks = self._split_kv_blocks(config, groups, num_blocks)
            self.executor.allocate_kv_cache(num_blocks, num_sliding_blocks)
            # An embedding model never decodes: no decode graphs.
            if device.type == "cuda" and not config.enforce_eager and self.pooling is None:
                self.executor.capture_cuda_graphs(config.max_num_seqs, self.max_model_len)
        except BaseException:
            self.executor.shutdown()
            raise
        sliding = None
        if groups is not None:
            sliding = SlidingBlocks(
                num_sliding_blocks, config.block_size, groups.sliding_window, config.enable_prefix_caching
            )
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching, sliding=sliding
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self.max_model_len,
            mc.eos_token_ids,
        )
        self.tokenizer = load_tokenizer(mc.path)
        self.structured = StructuredOutputManager(
            self.tokenizer,
            mc.vocab_size,
            mc.eos_token_ids,
            device,
            compile_timeout_s=config.grammar_compile_timeout_s,
        )
        self._rejected: list[tuple[str, str]] = []  # (request_id, message) of requests dropped after add
        self.model_info = ModelInfo(
            served_model_name=config.served_model_name or Path(mc.path).name,
            model_path=mc.path,
            architecture=mc.architecture,
            max_model_len=self.max_model_len,
            block_size=config.block_size,
            vocab_size=mc.vocab_size,
            eos_token_ids=mc.eos_token_ids,
            dtype=str(dtype).removeprefix("torch."),
            device=device.type,
            tensor_parallel_size=config.tensor_parallel_size,
            max_num_seqs=config.max_num_seqs,
            num_kv_blocks=num_blocks,
            sampling_defaults=sampling_defaults(mc.path) if config.generation_config == "auto" else {},
            task=self.task,
            embedding_size=mc.hidden_size if self.pooling else 0,
            matryoshka=bool(self.pooling and self.pooling.matryoshka),
            matryoshka_dimensions=self.pooling.matryoshka_dimensions if self.pooling else (),
        )
        self._requests: dict[str, list[Sequence]] = {}
        self._prompt_logprobs = PromptLogprobsAccumulator()  # received, until the sample's first update
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.num_steps = 0
        # Set to a list by a server that reports request timings: a sequence is appended when its first
        # token is sampled (its arrival, first-scheduled and first-token times are all set then).
        self.started: list[Sequence] | None = None
        self.async_scheduling = self.executor.supports_async and (
            config.async_scheduling if config.async_scheduling is not None else device.type == "cuda"
        )
        self._inflight = None  # (SchedulerOutput, pending result) of the step on the device
        # The columns of the last collected step, when its updates were all plain and none of its sequences
        # was aborted since: a step the scheduler says has the same batch copies them (updates_codec).
        self._steady: updates_codec.SteadyRows | None = None
        quant = mc.quantization
        log.info(
            "Model %s: %s weights%s",
            mc.architecture,
            str(dtype).removeprefix("torch."),
            "" if quant is None else f", linear layers in FP8 e4m3 ({quant.method})",
        )
        kv_dtype = str(dtype).removeprefix("torch.")
        if config.kv_cache_dtype == "fp8":  # half the bytes of a 16-bit cache: twice the blocks
            kv_dtype = "fp8 e4m3, 1 byte a value"
        kv_bytes = num_blocks * self.executor.kv_bytes_per_block
        if groups is not None:  # the global layers' blocks, then the sliding layers' (and their null block)
            per_layer = self.executor.kv_bytes_per_block // groups.num_layers
            kv_bytes = per_layer * (
                num_blocks * len(groups.full_layers) + (num_sliding_blocks + 1) * len(groups.sliding_layers)
            )
            log.info(
                "KV cache groups: %d global layers, %d blocks; %d sliding layers (window %d), %d blocks",
                len(groups.full_layers),
                num_blocks,
                len(groups.sliding_layers),
                groups.sliding_window,
                num_sliding_blocks,
            )
        log.info(
            "KV cache (%s): %d blocks of %d tokens (%.2f GiB); max concurrency at %d tokens a request: %.1fx",
            kv_dtype,
            num_blocks,
            config.block_size,
            kv_bytes / 2**30,
            self.max_model_len,
            num_blocks * config.block_size / self.max_model_len,
        )

    # ---- requests ------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        cache_salt: str | None = None,
    ) -> None:
        """Validate and queue a request; raises ValueError naming the field and its limit."""
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.pooling is not None:  # an embedding: one prefill, pooled (see pooling_params)
            params = pooling_params()
        self.validate(prompt_token_ids, params)
        every = self.pooling is not None and self.pooling.reads_every_position
        seqs = [
            Sequence(
                f"{request_id}#{i}",
                request_id,
                i,
                list(prompt_token_ids),
                params,
                cache_salt,
                reads_every_position=every or wants_prompt_logprobs(i, params.prompt_logprobs),
            )
            for i in range(params.n)
        ]
        if params.structured_outputs is not None:  # scheduled once its grammar is compiled (take_ready)
            self.structured.add(request_id, seqs, params.structured_outputs)
            self._requests[request_id] = seqs
            return
        self._requests[request_id] = seqs
        for seq in seqs:
            self.scheduler.add(seq)

    def abort(self, request_id: str, index: int | None = None) -> bool:
        seqs = self._requests.get(request_id)
        if not seqs:
            return False
        targets = [s for s in seqs if index is None or s.index == index]
        if self.structured.drop(request_id) is not None:  # still waiting for its grammar: never scheduled
            for seq in seqs:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
        self.scheduler.abort(targets)  # the model runner hears of it with the next step
        self._steady = None  # an in-flight token of theirs is void
        self.structured.forget(targets)
        self._prompt_logprobs.forget(s.seq_id for s in targets)
        self._forget_finished(request_id)
        return bool(targets)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0 or self._inflight is not None or self.structured.has_waiting

    def take_rejected(self) -> list[tuple[str, str]]:
        """(request_id, message) of requests dropped after add_request: their constraint did not compile.
        The serving loop reports them as INVALID_ARGUMENT (see engine_loop.run_loop)."""
        rejected = self._rejected
        self._rejected = []
        return rejected

    @property
    def runner(self):
        """The ModelRunner of a single-process engine (tests and tools look inside it)."""
        return self.executor.runner

    def check_alive(self) -> None:
        """Raises when the engine cannot run steps any more (a tensor-parallel worker died)."""
        self.executor.check_alive()

    def shutdown(self) -> None:
        """Stops the tensor-parallel workers, if any. Idempotent."""
        self.executor.shutdown()
        self.structured.shutdown()

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> list[SequenceUpdate]:
        """Schedule and launch one step; return the updates of the step that finished meanwhile.

        With async scheduling the step launched here is collected by the next call, so the host
        schedules step n+1 while the device runs step n; otherwise it is collected at once.
        """
        return updates_codec.unpack(self.step_packed())

    def step_packed(self) -> updates_codec.PackedUpdates:
        """`step`, with its updates as built (see updates_codec): what the engine process sends as is."""
        updates = updates_codec.empty()
        if self._inflight is not None and self.scheduler.num_with_penalties:
            updates = self._collect()  # penalties read the output tokens: they must all be known
        self._admit_compiled()
        out = self.scheduler.schedule()
        launched = None
        if not out.is_empty:
            mask = self._grammar_mask(out, updates) if self.structured.constrains(out) else None
            launched = (out, self.executor.launch(out, mask))
            self.num_steps += 1
        if self._inflight is not None:
            updates_codec.extend(updates, self._collect())
        self._inflight = launched
        if launched is not None and not self.async_scheduling:
            updates_codec.extend(updates, self._collect())
        if not self.has_unfinished():
            self.block_manager.check_all_free()
        return updates

    def _admit_compiled(self) -> None:
        """Schedule the structured-output requests whose grammar is ready; with nothing else to run, wait
        for one a little (the loop would otherwise spin while a grammar compiles)."""
        if not self.structured.has_waiting:
            return
        if self.scheduler.num_unfinished == 0 and self._inflight is None:
            self.structured.wait(0.05)
        for seq in self.structured.take_ready():
            self.scheduler.add(seq)
        for request_id, message in self.structured.take_rejected():
            for seq in self._requests.pop(request_id, []):
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
            self._rejected.append((request_id, message))

    def _grammar_mask(self, out, updates: updates_codec.PackedUpdates):
        """The mask callback of a step with structured-output draws. The runner calls it once the step's
        forward pass is queued: first the step still in flight is collected (its tokens are the grammars'
        next input: update_from_output feeds them), then the masks are filled for this step's draws. So the
        host's grammar work overlaps the device's forward pass, as in vLLM (its deferred sample_tokens) and
        SGLang (the overlap scheduler waits for the previous batch before the vocab mask)."""

        def mask():
            if self._inflight is not None:
                updates_codec.extend(updates, self._collect())
            return self.structured.fill_bitmask(out)

        return mask

    def _collect(self) -> updates_codec.PackedUpdates:
        """Wait for the in-flight step's tokens, resolve its placeholders, and build its updates."""
        out, pending = self._inflight
        self._inflight = None
        result = pending.result()
        if result.prompt_logprobs:  # before the updates: a prompt's last chunk comes with its first token
            self._prompt_logprobs.add(out.seq_ids, result.prompt_logprobs)
        sampling = out.sampled_seqs()
        finished = self.scheduler.update_from_output(sampling, result.token_ids)
        self.num_prompt_tokens += out.num_prompt_tokens
        steady = self._steady
        if result.pooled:
            packed = self._embedding_updates(sampling, result.pooled)
        elif out.same_batch and steady is not None and not finished:
            # The previous step's sequences, in its order (the scheduler's word), all of whose updates were
            # plain, none finished or aborted since: only the token ids differ.
            packed = steady.packed(result.token_ids)
        else:
            packed = self._build_updates(sampling, result, finished)
        if not result.pooled:  # an embedding generates nothing
            self.num_generation_tokens += len(packed.request_ids) + len(packed.other)
        if self.structured.num_live:
            self.structured.forget(finished)
        if self._prompt_logprobs:
            self._prompt_logprobs.forget(seq.seq_id for seq in finished)
        for seq in finished:
            self._forget_finished(seq.request_id)
        return packed

    def _build_updates(
        self, sampling: list[Sequence], result: SampleResult, finished: list[Sequence]
    ) -> updates_codec.PackedUpdates:
        """The step's updates, row by row. When every one is plain (and nothing finished), its columns are
        kept: a later step of the same batch copies them (see updates_codec.SteadyRows)."""
        done = set(finished)
        now = time.monotonic()
        packed = updates_codec.empty()
        # Runs once per sampled token, so the plain-update rule of updates_codec.pack is inlined here: the
        # common update is four appends to the columns, no object.
        request_ids, token_ids = packed.request_ids.append, packed.token_ids.append
        cached, prompt = packed.num_cached_tokens.append, packed.num_prompt_tokens.append
        FINISHED = SequenceStatus.FINISHED  # a local: an enum member lookup costs ~60 ns
        rows = zip(sampling, result.token_ids, result.logprobs, strict=True)
        for seq, token, logprobs in rows:
            is_done = seq.status is FINISHED
            if is_done and seq not in done:
                continue  # aborted, or stopped by an earlier step's token: this one is void
            prompt_logprobs = None
            if seq.first_token_time is None:
                seq.first_token_time = now
                if self.started is not None:
                    self.started.append(seq)
                if seq.reads_every_position:  # its prompt logprobs ride on its first update
                    prompt_logprobs = self._prompt_logprobs.pop(seq.seq_id)
            num_cached = seq.num_cached_tokens if seq.num_cached_tokens > 0 else 0
            if seq.index == 0 and not is_done and logprobs is None and prompt_logprobs is None:
                request_ids(seq.request_id)
                token_ids(token)
                cached(num_cached)
                prompt(seq.num_prompt_tokens)
                continue
            packed.other.append(
                SequenceUpdate(
                    seq.request_id,
                    seq.index,
                    [token],
                    None if logprobs is None else [logprobs],
                    seq.finish_reason if is_done else None,
                    seq.stop_reason if is_done else None,
                    seq.num_prompt_tokens,
                    num_cached,
                    prompt_logprobs,
                )
            )
        all_plain = not finished and len(packed.request_ids) == len(sampling)  # no void, no other update
        self._steady = updates_codec.SteadyRows(packed) if all_plain else None
        return packed

    def _embedding_updates(
        self, sampling: list[Sequence], pooled: list[list[float]]
    ) -> updates_codec.PackedUpdates:
        """An embedding model's sequences end with their prompt: each update carries its vector, no token."""
        packed = updates_codec.empty()
        now = time.monotonic()
        for seq, vector in zip(sampling, pooled, strict=True):
            if seq.finish_reason == "abort":
                continue
            seq.first_token_time = now
            num_cached = max(seq.num_cached_tokens, 0)
            packed.other.append(
                SequenceUpdate(
                    seq.request_id,
                    seq.index,
                    [],
                    None,
                    "length",
                    None,
                    seq.num_prompt_tokens,
                    num_cached,
                    embedding=vector,
                )
            )
        self._steady = None
        return packed

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage,
            prefix_cache_hit_rate=bm.num_hit_tokens / bm.num_query_tokens if bm.num_query_tokens else 0.0,
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=bm.num_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
            num_prefix_query_tokens=bm.num_query_tokens,
            num_prefix_hit_tokens=bm.num_hit_tokens,
            num_steps=self.num_steps,
        )

    # ---- internals -----------------------------------------------------------------------------
    def validate(self, prompt: list[int], params: SamplingParams) -> None:
        """Raise ValueError naming the field and its limit if the request can never run here."""
        if not prompt:
            raise ValueError("prompt must contain at least one token")
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})")
        params.validate(vocab, self.config.max_logprobs)
        capacity = min(self.max_model_len, self.block_manager.num_blocks * self.block_manager.block_size)
        if len(prompt) >= capacity:
            raise ValueError(
                f"prompt has {len(prompt)} tokens; the limit is {capacity - 1} "
                f"(max_model_len {self.max_model_len}, leaving room for one generated token)"
            )
        if params.max_tokens is not None and len(prompt) + params.max_tokens > capacity:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the limit of "
                f"{capacity} tokens (max_model_len {self.max_model_len})"
            )

    @property
    def is_embedding_model(self) -> bool:
        return self.pooling is not None

    def _forget_finished(self, request_id: str) -> None:
        seqs = self._requests.get(request_id)
        if seqs is not None and all(s.is_finished for s in seqs):
            del self._requests[request_id]

    @staticmethod
    def _max_model_len(config: EngineConfig, mc: ModelConfig) -> int:
        limit = max_context(mc)  # rope scaling; a window the model does not honour
        if config.max_model_len is not None:
            if config.max_model_len > limit:
                raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's limit of {limit}")
            return config.max_model_len
        return limit

    def _num_kv_blocks(self, config: EngineConfig) -> int:
        if config.num_kv_blocks is not None:
            return config.num_kv_blocks
        per_block = self.executor.kv_bytes_per_block  # on each tensor-parallel rank
        if self.executor.device.type == "cuda":
            return self.executor.profile_num_kv_blocks(
                config.gpu_memory_utilization, config.max_num_batched_tokens
            )
        return max(1, int(config.cpu_kv_cache_gib * 2**30) // per_block)

    @staticmethod
    def _split_kv_blocks(config: EngineConfig, groups: KVCacheGroups, num_blocks: int) -> tuple[int, int]:
        """(global blocks, sliding blocks) for a hybrid model, from `num_blocks` blocks of every layer.

        A given num_kv_blocks is the global group's (the context it holds, as for any model); the sliding
        group gets what it can use at most. Otherwise the memory of `num_blocks` all-layer blocks is split:
        the sliding group gets what it can use (core/kv_cache_groups.py), its null block included, and the
        global group the rest, so the saving shows as more global blocks."""
        demand = sliding_demand(
            groups.sliding_window, config.block_size, config.max_num_seqs, config.max_num_batched_tokens
        )
        if config.num_kv_blocks is not None:
            return num_blocks, min(num_blocks, demand)
        layer_blocks = num_blocks * groups.num_layers - len(groups.sliding_layers)  # less the null blocks
        num_full, num_sliding = split_blocks(layer_blocks, groups, demand)
        if num_full < 1 or num_sliding < 1:
            raise ValueError(f"no room for the KV cache: {num_blocks} blocks of all layers")
        return num_full, num_sliding
