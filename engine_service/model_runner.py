"""The model runner: the only place that turns scheduled sequences into tensors.

It owns the model, the KV cache and the sampler. Each step it lays the scheduled tokens out as one flat
batch (see engine_service/ops/torch_ops.py for the layout), runs one forward pass, computes logits only
for the sequences that caught up, and samples them.
"""

from __future__ import annotations

import logging

import torch

from engine_service.core.scheduler import SchedulerOutput
from engine_service.layers.attention import AttentionMetadata
from engine_service.model_config import ModelConfig
from engine_service.models.registry import model_class
from engine_service.sampler import SampleResult, Sampler
from engine_service.weights import init_dummy_weights, load_weights

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
        self, model_config: ModelConfig, device: torch.device, dtype: torch.dtype, block_size: int,
        load_format: str, seed: int, tp_rank: int = 0, tp_size: int = 1,
    ):
        self.model_config = model_config
        self.device, self.dtype, self.block_size = device, dtype, block_size
        torch.manual_seed(seed)
        with torch.device(device):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                self.model = model_class(model_config.architecture)(model_config.hf_config, tp_rank, tp_size)
            finally:
                torch.set_default_dtype(previous)
        if load_format == "dummy":
            init_dummy_weights(self.model, seed)
        else:
            load_weights(self.model, model_config.path)
        self.model.eval()
        self.sampler = Sampler(device, model_config.eos_token_ids, seed)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- KV cache ------------------------------------------------------------------------------
    @property
    def kv_bytes_per_block(self) -> int:
        attn = self.model.model.layers[0].self_attn
        per_layer = 2 * self.block_size * attn.num_kv_heads * attn.head_dim * self.dtype.itemsize
        return per_layer * len(self.model.model.layers)

    @torch.inference_mode()
    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        """Blocks that fit in the card's budget after the weights and a peak-activation forward pass."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        T = max_num_batched_tokens
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.full((T,), -1, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor([0, T], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor([T], dtype=torch.int32, device=dev),
            block_tables=torch.zeros((1, 1), dtype=torch.int32, device=dev),
            max_query_len=T,
            max_seq_len=T,
        )
        # A one-block stand-in cache: the profile pass measures activations, not the cache.
        attn = self.model.model.layers[0].self_attn
        shape = (-(-T // self.block_size), self.block_size, attn.num_kv_heads, attn.head_dim)
        caches = [(torch.empty(shape, dtype=self.dtype, device=dev),) * 2 for _ in self.model.model.layers]
        ids = torch.zeros(T, dtype=torch.int64, device=dev)
        meta.block_tables = torch.arange(shape[0], dtype=torch.int32, device=dev)[None, :]
        hidden = self.model(ids, torch.arange(T, device=dev), caches, meta)
        self.model.compute_logits(hidden[-min(T, 256):])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(self.device) - sum(c[0].numel() * c[0].element_size() for c in caches)
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
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in self.model.model.layers
        ]

    # ---- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, block_tables: list[list[int]]) -> SampleResult:
        """Run the scheduled tokens; `block_tables[i]` is the i-th scheduled sequence's block table."""
        input_ids, positions, meta, logits_indices = self._prepare(out, block_tables)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, hidden]
        sampling = [s.seq for s in out.scheduled if s.samples]
        if not sampling:
            return SampleResult([], [])
        logits = self.model.compute_logits(hidden[logits_indices])  # [B, vocab]
        return self.sampler(logits, sampling)

    def _prepare(self, out: SchedulerOutput, block_tables: list[list[int]]):
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        for item, table in zip(out.scheduled, block_tables, strict=True):
            start, end = item.start, item.start + item.num_new_tokens
            input_ids += item.seq.token_ids_slice(start, end)
            positions += range(start, end)
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            query_start.append(query_start[-1] + item.num_new_tokens)
            seq_lens.append(end)
            if item.samples:
                logits_indices.append(query_start[-1] - 1)
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=dev),
            max_query_len=max(s.num_new_tokens for s in out.scheduled),
            max_seq_len=max(seq_lens),
        )
        return (
            torch.tensor(input_ids, dtype=torch.int64, device=dev),
            torch.tensor(positions, dtype=torch.int64, device=dev),
            meta,
            torch.tensor(logits_indices, dtype=torch.int64, device=dev),
        )
