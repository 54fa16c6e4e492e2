"""The model runner: the only place that turns scheduled sequences into tensors.

It owns the model, the KV cache and the sampler. Each step it lays the scheduled tokens out as one flat
batch (see engine_service/ops/torch_ops.py for the layout), runs one forward pass, computes logits only
for the sequences that caught up, and samples them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine_service.core.model_config import ModelConfig
from engine_service.core.pooling import PoolingConfig
from engine_service.core.scheduler import SchedulerOutput
from engine_service.core.sequence import PLACEHOLDER
from engine_service.layers.attention import AttentionMetadata
from engine_service.models.registry import model_class
from engine_service.worker import host_copy, prompt_logprobs
from engine_service.worker.block_table_rows import BlockTableRows
from engine_service.worker.cuda_graphs import DecodeGraphs
from engine_service.worker.pooler import Pooler
from engine_service.worker.sampler import PendingSample, Sampler, SampleResult
from engine_service.worker.weights import init_dummy_weights, load_weights

log = logging.getLogger(__name__)

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
                self.model = model_class(model_config.architecture)(model_config, tp_rank, tp_size)
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
        self.graphs: DecodeGraphs | None = None
        self.block_rows = BlockTableRows()
        # The previous launch's sampled tokens on the device, and the seq_id of each of their rows.
        self._last_sampled: tuple[torch.Tensor | None, list[str]] = (None, [])
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

    def allocate_kv_cache(self, num_blocks: int) -> None:
        attn = self.model.model.layers[0].self_attn
        shape = (num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
                torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
            )
            for _ in self.model.model.layers
        ]

    # ---- one step ------------------------------------------------------------------------------
    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        self.graphs = DecodeGraphs(
            self.model, self.kv_caches, max_num_seqs, max_model_len, self.block_size, self.device
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

    def execute(self, out: SchedulerOutput, block_tables: list[list[int]]) -> SampleResult:
        """Run the scheduled tokens and wait for the sampled ones."""
        return self.launch(out, block_tables).result()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, block_tables: list[list[int]]) -> PendingSample:
        """Queue the step on the device; `block_tables[i]` is the i-th scheduled sequence's block table.

        A fed token may be a PLACEHOLDER for a token the previous launch sampled and the host has not
        seen yet (async scheduling): its id is copied on the device from that launch's sampled tokens.
        """
        step = _HostStep.build(out, block_tables, self.block_size)
        items = [s for s in out.scheduled if s.samples]
        seq_ids = [s.seq.seq_id for s in out.scheduled]
        fixup = self._placeholder_fixup(step, seq_ids)
        self.block_rows.forget(seq.seq_id for seq in out.preempted)
        table = self.block_rows.gather(seq_ids, block_tables)
        scored = None  # prompt logprobs: only a step with a prompt chunk (never a decode graph's) has any
        if self.graphs is not None and step.is_decode and len(items) <= self.graphs.max_batch_size:
            hidden = self.graphs.run(step.input_ids, step.positions, step.slots, step.seq_lens, table, fixup)
            logits = self.model.compute_logits(hidden)  # [B, vocab]
        else:
            input_ids, positions, meta, indices = step.to_device(table, self.device)
            if fixup is not None:
                fixup(input_ids)
            hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, hidden]
            if self.pooler is not None:
                return self.pooler.launch(out, step.query_start, hidden)
            scored = self._score_prompts(out, step, hidden)
            if not items:
                return PendingSample.empty(scored)
            logits = self.model.compute_logits(hidden[indices])  # [B, vocab]
        # With tensor parallelism every rank samples: the gathered logits and the counter-based noise are
        # the same on every rank, so each holds the step's tokens on its device for the next step's
        # placeholders. Only rank 0's tokens go to the host (its worker alone calls result()).
        positions = [it.start + it.num_new_tokens - it.seq.num_prompt_tokens for it in items]
        pending = self.sampler.launch(logits, [it.seq for it in items], positions)
        pending.prompt_logprobs = scored
        sampled_ids = seq_ids if len(items) == len(seq_ids) else [it.seq.seq_id for it in items]
        self._last_sampled = (pending.tokens, sampled_ids)
        return pending

    def _score_prompts(self, out: SchedulerOutput, step: _HostStep, hidden: torch.Tensor):
        """Prompt logprobs of the step's prompt chunks that asked for them (worker/prompt_logprobs.py), or
        None. A step whose every sequence samples one token has no prompt chunk: no scan then."""
        if step.max_query_len == 1 and len(step.logits_indices) == len(out.scheduled):
            return None
        spans = prompt_logprobs.find_spans(out, step.query_start)
        return prompt_logprobs.launch(self.model, hidden, spans) if spans else None

    def forget(self, seq_ids) -> None:
        """Sequences that finished or were aborted: their block-table rows are free."""
        seq_ids = list(seq_ids)
        self.block_rows.forget(seq_ids)
        if self.pooler is not None:
            self.pooler.forget(seq_ids)

    def _placeholder_fixup(self, step: _HostStep, seq_ids: list[str]):
        """A function that writes the previous launch's sampled ids over this step's placeholders, or None.
        `seq_ids`: the scheduled sequences' ids, in order."""
        if not step.placeholder_at:
            return None
        tokens, sampled_ids = self._last_sampled
        n = len(step.input_ids)
        if len(step.placeholder_at) == n and seq_ids == sampled_ids:
            # Steady decode: every input is a placeholder, one per sequence, and the previous step sampled
            # exactly these sequences in this order: its tokens are this step's input ids, as they lie.
            def copy_all(input_ids: torch.Tensor) -> None:
                input_ids[:n].copy_(tokens)

            return copy_all
        rows = {sid: row for row, sid in enumerate(sampled_ids)}
        wanted = [seq_ids[i] for i in step.placeholder_seq]
        missing = [sid for sid in wanted if sid not in rows]
        if missing:
            raise RuntimeError(f"placeholders for {missing} match no token of the previous step")
        at, row = host_copy.int64_parts([step.placeholder_at, [rows[sid] for sid in wanted]], self.device)

        def fix(input_ids: torch.Tensor) -> None:
            input_ids[at] = tokens[row]

        return fix


@dataclass
class _HostStep:
    """A step's inputs as host lists: tokens, their positions and KV slots, per-sequence lengths."""

    input_ids: list[int]
    positions: list[int]
    slots: list[int]
    query_start: list[int]
    seq_lens: list[int]
    logits_indices: list[int]
    max_query_len: int
    placeholder_at: list[int] = field(default_factory=list)  # flat indices of PLACEHOLDER input ids
    placeholder_seq: list[int] = field(default_factory=list)  # ... and the scheduled item each belongs to

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1 and len(self.logits_indices) == len(self.seq_lens)

    @classmethod
    def build(cls, out: SchedulerOutput, block_tables: list[list[int]], bs: int) -> _HostStep:
        max_query_len = max(s.num_new_tokens for s in out.scheduled)
        if max_query_len == 1:
            return cls._build_decode(out, block_tables, bs)
        step = cls([], [], [], [0], [], [], max_query_len)
        input_ids, positions, slots = step.input_ids, step.positions, step.slots
        query_start, seq_lens, logits_indices = step.query_start, step.seq_lens, step.logits_indices
        num_tokens = 0
        for i, (item, table) in enumerate(zip(out.scheduled, block_tables, strict=True)):
            seq, start, n = item.seq, item.start, item.num_new_tokens
            end = start + n
            if n == 1:  # a decode: the hot case, one token
                p = seq.num_prompt_tokens
                token = seq.output_token_ids[start - p] if start >= p else seq.prompt_token_ids[start]
                input_ids.append(token)
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                ids = seq.token_ids_slice(start, end)
                token = ids[-1]
                input_ids += ids
                positions += range(start, end)
                slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            num_tokens += n
            if token == PLACEHOLDER:  # only the newest token can be one (see Scheduler)
                step.placeholder_at.append(num_tokens - 1)
                step.placeholder_seq.append(i)
            query_start.append(num_tokens)
            seq_lens.append(end)
            if item.samples:
                logits_indices.append(num_tokens - 1)
        return step

    @classmethod
    def _build_decode(cls, out: SchedulerOutput, block_tables: list[list[int]], bs: int) -> _HostStep:
        """`build` for a step of one token per sequence (steady decode), a column at a time: the same lists,
        in comprehensions rather than a loop of appends."""
        scheduled = out.scheduled
        starts = [item.start for item in scheduled]  # the one token's position
        seqs = [item.seq for item in scheduled]
        input_ids = [
            seq.output_token_ids[p - seq.num_prompt_tokens]
            if p >= seq.num_prompt_tokens
            else seq.prompt_token_ids[p]
            for seq, p in zip(seqs, starts, strict=True)
        ]
        slots = [table[p // bs] * bs + p % bs for table, p in zip(block_tables, starts, strict=True)]
        n = len(scheduled)
        if input_ids.count(PLACEHOLDER) == n:  # async steady decode: every input is the last step's token
            placeholder_at = list(range(n))
        else:
            placeholder_at = [i for i, token in enumerate(input_ids) if token == PLACEHOLDER]
        samples = [i for i, item in enumerate(scheduled) if item.samples]
        return cls(
            input_ids=input_ids,
            positions=starts,
            slots=slots,
            query_start=list(range(n + 1)),
            seq_lens=[p + 1 for p in starts],
            logits_indices=samples,
            max_query_len=1,
            placeholder_at=placeholder_at,
            placeholder_seq=list(placeholder_at),  # one token per sequence: the flat index is the item's
        )

    def to_device(self, table: np.ndarray, dev: torch.device):
        """(input ids, positions, attention metadata, logits indices) on `dev`, in one copy that does not
        wait for the device (see host_copy); `table` is the step's [B, width] block table."""
        input_ids, positions, slots, query_start, seq_lens, indices, flat_table = host_copy.int64_parts(
            [
                self.input_ids,
                self.positions,
                self.slots,
                self.query_start,
                self.seq_lens,
                self.logits_indices,
                table.reshape(-1),
            ],
            dev,
        )
        meta = AttentionMetadata(
            slot_mapping=slots,
            query_start_loc=query_start.to(torch.int32),
            seq_lens=seq_lens.to(torch.int32),
            block_tables=flat_table.view(table.shape).to(torch.int32),
            max_query_len=self.max_query_len,
            max_seq_len=max(self.seq_lens),
        )
        return input_ids, positions, meta, indices
