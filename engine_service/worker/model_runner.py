"""The model runner: the only place that turns scheduled sequences into tensors.

It owns the model, the KV cache, the sampler and the persistent batch (input_batch.py), which each step's
SchedulerOutput updates. Each step it lays the scheduled tokens out as one flat batch (step_inputs.py),
runs one forward pass, computes logits only for the sequences that caught up, and samples them.

A hybrid model's KV cache has two groups (core/kv_cache_groups.py): the sliding layers' tensors hold their
own pool (plus the null block), and each of those layers reads the sliding group's slots and block table
(Attention.kv_group, AttentionMetadata.groups).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from engine_service.core.kv_cache_groups import KVCacheGroups, kv_cache_groups
from engine_service.core.model_config import ModelConfig
from engine_service.core.pooling import PoolingConfig
from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.layers.attention import Attention, AttentionMetadata
from engine_service.models.registry import model_class
from engine_service.worker import host_copy, prompt_logprobs
from engine_service.worker.cuda_graphs import DecodeGraphs
from engine_service.worker.input_batch import InputBatch
from engine_service.worker.pooler import Pooler
from engine_service.worker.sampler import PendingSample, Sampler, SampleResult
from engine_service.worker.step_inputs import StepInputs
from engine_service.worker.token_bitmask import TokenBitmask
from engine_service.worker.weights import init_dummy_weights, load_weights

log = logging.getLogger(__name__)

# Called by launch between the forward pass and the draw: the step's grammar mask (None: no row needs one).
GrammarMask = Callable[[], TokenBitmask | None]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU (use device='cpu')")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        block_size: int,
        load_format: str,
        seed: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        pdl: bool = True,
        pooling: PoolingConfig | None = None,
        kv_cache_dtype: str = "auto",
    ):
        if device.type == "cuda":  # one process serves one engine: the launch setting is the process's
            from engine_service.ops import triton_pdl

            triton_pdl.set_enabled(pdl)
        self.model_config = model_config
        self.device, self.dtype, self.block_size = device, dtype, block_size
        self.kv_dtype = torch.float8_e4m3fn if kv_cache_dtype == "fp8" else dtype
        self.tp_rank = tp_rank
        torch.manual_seed(seed)
        with torch.device(device):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                # Quantized layers (model_config.quantization) are built as the model is.
                model_cls = model_class(model_config.architecture)
                self.model = model_cls(model_config, tp_rank, tp_size)
            finally:
                torch.set_default_dtype(previous)
        if load_format == "dummy":
            init_dummy_weights(self.model, seed)
        else:
            load_weights(self.model, model_config.path)
        self.model.eval()
        self.sampler = Sampler(device, model_config.eos_token_ids, seed)
        self.pooler = Pooler(pooling) if pooling is not None else None  # an embedding model pools instead
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        mc = model_config
        self.kv_groups: KVCacheGroups | None = kv_cache_groups(
            mc.layer_types, mc.sliding_window, model_cls.honours_sliding_window
        )
        self.graphs: DecodeGraphs | None = None
        self.batch = InputBatch(device, seed)
        self._profiler: tuple[torch.profiler.profile, str] | None = None

    # ---- KV cache ------------------------------------------------------------------------------
    @property
    def kv_bytes_per_block(self) -> int:
        attn = self.model.model.layers[0].self_attn
        per_layer = 2 * self.block_size * attn.num_kv_heads * attn.head_dim * self.kv_dtype.itemsize
        return per_layer * len(self.model.model.layers)

    @torch.inference_mode()
    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        """Blocks that fit in the card's budget after the weights and a peak-activation forward pass."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        T = max_num_batched_tokens
        dev = self.device
        # A stand-in cache just big enough for T tokens: the profile pass measures activations, not the
        # cache, and writes nothing into it (every slot is -1).
        attn = self.model.model.layers[0].self_attn
        shape = (-(-T // self.block_size), self.block_size, attn.num_kv_heads, attn.head_dim)
        caches = [(torch.empty(shape, dtype=self.kv_dtype, device=dev),) * 2 for _ in self.model.model.layers]
        meta = AttentionMetadata(
            slot_mapping=torch.full((T,), -1, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor([0, T], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor([T], dtype=torch.int32, device=dev),
            block_tables=torch.arange(shape[0], dtype=torch.int32, device=dev)[None, :],
            max_query_len=T,
            max_seq_len=T,
        )
        ids = torch.zeros(T, dtype=torch.int64, device=dev)
        hidden = self.model(ids, torch.arange(T, device=dev), caches, meta)
        self.model.compute_logits(hidden[-min(T, 256) :])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(self.device) - sum(
            c[0].numel() * c[0].element_size() for c in caches
        )
        del caches, hidden
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free - torch.cuda.memory_allocated(self.device)
        budget = total * gpu_memory_utilization - peak - used_by_others
        num_blocks = int(budget // self.kv_bytes_per_block)
        if num_blocks < 1:
            raise ValueError(
                f"no room for the KV cache: weights and activations take {peak / 2**30:.1f} GiB of the "
                f"{total * gpu_memory_utilization / 2**30:.1f} GiB budget (raise gpu_memory_utilization or "
                "lower max_num_batched_tokens)"
            )
        return num_blocks

    def allocate_kv_cache(self, num_blocks: int, num_sliding_blocks: int | None = None) -> None:
        """Zeroed K and V caches per layer: `num_blocks` blocks, or for a hybrid model's sliding layers
        `num_sliding_blocks` and their null block (the last, never written: zeros, so a masked key a kernel
        loads from it is finite)."""
        attn = self.model.model.layers[0].self_attn
        groups = self.kv_groups
        sliding = frozenset(groups.sliding_layers) if groups is not None else frozenset()
        if sliding:
            assert num_sliding_blocks is not None, "a hybrid model needs its sliding group's block count"
            self._assign_kv_groups(groups)
            self.batch.enable_sliding_table(null_block=num_sliding_blocks)

        def cache(layer: int) -> torch.Tensor:
            n = num_sliding_blocks + 1 if layer in sliding else num_blocks
            shape = (n, self.block_size, attn.num_kv_heads, attn.head_dim)
            return torch.zeros(shape, dtype=self.kv_dtype, device=self.device)

        self.kv_caches = [(cache(i), cache(i)) for i in range(len(self.model.model.layers))]

    def _assign_kv_groups(self, groups: KVCacheGroups) -> None:
        """Point each sliding layer's attention at group 1 (the layers' Attention modules, in layer order)."""
        attns = [m for m in self.model.modules() if isinstance(m, Attention)]
        assert len(attns) == groups.num_layers, f"{len(attns)} attention layers, {groups.num_layers} types"
        for i in groups.sliding_layers:
            assert attns[i].sliding_window == groups.sliding_window, f"layer {i} is not a sliding layer"
            attns[i].kv_group = 1
        for i in groups.full_layers:
            assert attns[i].sliding_window is None, f"layer {i} is not a global layer"

    # ---- one step ------------------------------------------------------------------------------
    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        self.graphs = DecodeGraphs(
            self.model,
            self.kv_caches,
            max_num_seqs,
            max_model_len,
            self.block_size,
            self.device,
            sliding=self.kv_groups is not None,
        )
        self.graphs.capture()

    def release_graphs(self) -> None:
        """Drop the decode graphs once this runner's last step is done (DecodeGraphs.release says why)."""
        if self.graphs is not None:
            torch.cuda.synchronize(self.device)
            self.graphs.release()
            self.graphs = None

    def start_profile(self, trace_dir: str) -> None:
        """torch.profiler over this rank's host and device work, until stop_profile."""
        if self._profiler is not None:
            raise RuntimeError("a profile is already running")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        profiler = torch.profiler.profile(activities=activities)
        profiler.start()
        self._profiler = (profiler, trace_dir)

    def stop_profile(self) -> str:
        """Stop the profile and write it as a Chrome trace, `<trace_dir>/rank<r>.json`; returns its path."""
        if self._profiler is None:
            raise RuntimeError("no profile is running (start_profile first)")
        (profiler, trace_dir), self._profiler = self._profiler, None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        profiler.stop()
        path = str(Path(trace_dir) / f"rank{self.tp_rank}.json")
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(path)
        return path

    def num_sequences(self) -> int:
        """Sequences this runner keeps (running, preempted, or finished and not yet reported so)."""
        return len(self.batch.states)

    def execute(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> SampleResult:
        """Run the scheduled tokens and wait for the sampled ones."""
        return self.launch(out, grammar_mask).result()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> PendingSample:
        """Apply the step's diff to the persistent batch and queue the step on the device.

        A fed token may be a PLACEHOLDER for a token the previous launch sampled and the host has not
        seen yet (async scheduling): its id is copied on the device from its row's last sampled token.
        `grammar_mask`, for a step with structured-output rows, is called once the forward pass is queued
        and before the draw: the host works out the mask (it may first wait for the previous step's
        tokens) while the device runs this step's forward pass.
        """
        batch = self.batch
        batch.update(out)
        if self.pooler is not None and out.finished_seq_ids:
            self.pooler.forget(out.finished_seq_ids)
        step = StepInputs.build(out, batch, self.block_size)
        scored = None  # prompt logprobs: only a step with a prompt chunk (never a decode graph's) has any
        if self.graphs is not None and step.is_decode and len(step.seq_lens) <= self.graphs.max_batch_size:
            fixup = self._placeholder_fixup(step)
            # a hybrid model's sliding group: its slots and table too
            sliding = () if step.sliding_table is None else (step.sliding_slots, step.sliding_table)
            hidden = self.graphs.run(
                step.input_ids, step.positions, step.slots, step.seq_lens, step.table, fixup, *sliding
            )
            logits = self.model.compute_logits(hidden)  # [B, vocab]
        else:
            input_ids, positions, meta, (indices, at, rows) = step.to_device(self.device)
            fixup = self._placeholder_fixup(step, at, rows)
            if fixup is not None:
                fixup(input_ids)
            hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, hidden]
            if self.pooler is not None:  # zeros for tokens, in the sampling rows' order
                pending = self.pooler.launch(batch.scheduled(out), step.query_start.tolist(), hidden)
                batch.record_sampled(pending.tokens)
                return pending
            scored = self._score_prompts(out, step, hidden)
            if not len(indices):
                return PendingSample.empty(scored)
            logits = self.model.compute_logits(hidden[indices])  # [S, vocab]
        # With tensor parallelism every rank samples: the gathered logits and the counter-based noise are
        # the same on every rank, so each holds the step's tokens on its device for the next step's
        # placeholders. Only rank 0's tokens go to the host (its worker alone calls result()).
        bitmask = grammar_mask() if grammar_mask is not None else None
        pending = self.sampler.launch(logits, batch.sampling, step.sample_positions, bitmask)
        pending.prompt_logprobs = scored
        batch.record_sampled(pending.tokens)
        return pending

    def _score_prompts(self, out: SchedulerOutput, step: StepInputs, hidden: torch.Tensor):
        """Prompt logprobs of the step's prompt chunks that asked for them (worker/prompt_logprobs.py), or
        None. A step whose every sequence samples one token has no prompt chunk: no scan then."""
        if step.max_query_len == 1 and len(step.logits_indices) == len(out.seq_ids):
            return None
        spans = prompt_logprobs.find_spans(self.batch.scheduled(out), step.query_start.tolist())
        return prompt_logprobs.launch(self.model, hidden, spans) if spans else None

    def _placeholder_fixup(self, step: StepInputs, at: torch.Tensor | None = None, rows=None):
        """A function that writes the rows' last sampled tokens over the step's PLACEHOLDER input ids, or
        None. `at`, `rows`: the placeholders' flat indices and rows on the device, if already copied."""
        if not step.num_placeholders:
            return None
        last = self.batch.last_token
        if step.all_placeholders:  # an async decode: every input is its own row's last token
            batch_rows = self.batch.rows_device  # [B]
            n = len(batch_rows)

            def gather_all(input_ids: torch.Tensor) -> None:
                torch.index_select(last, 0, batch_rows, out=input_ids[:n])

            return gather_all
        if at is None:
            at, rows = host_copy.int64_parts([step.placeholder_at, step.placeholder_rows], self.device)

        def fix(input_ids: torch.Tensor) -> None:
            input_ids[at] = last[rows]

        return fix
