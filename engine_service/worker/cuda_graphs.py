"""CUDA graphs for decode-only steps: one graph per padded batch size, captured at start-up.

A decode step of a small model is mostly launch overhead: dozens of kernels per layer, each a few
microseconds of work. Capturing the whole forward pass once per batch size turns a step into one replay.
The graphs read persistent input buffers; a step copies its inputs into them and pads the batch up to the
next captured size (padding rows are sequences of length 0: they write no KV (slot -1) and attend to nothing).

    sizes: 1 2 4 8 16 24 ... max_num_seqs (rounded up to a multiple of 8)

A hybrid model (core/kv_cache_groups.py) has a second static slot row and block table, its sliding
group's, which the graph's sliding layers read (AttentionMetadata.groups); a single-group model's buffers
and step copies are what they were.
"""

from __future__ import annotations

import bisect
import logging
import time

import numpy as np
import torch
from torch import nn

from engine_service.layers.attention import AttentionMetadata
from engine_service.worker import host_copy

log = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    top = -(-max_num_seqs // 8) * 8
    return [s for s in (1, 2, 4) if s < top] + list(range(8, top + 1, 8))


class DecodeGraphs:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        sliding: bool = False,
    ):
        self.model, self.kv_caches = model, kv_caches
        self.sliding = sliding
        self.sizes = capture_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        max_bs, max_blocks = self.sizes[-1], -(-max_model_len // block_size)
        i32, i64 = torch.int32, torch.int64
        # One int64 device buffer holds every per-step input, so a step is one host-to-device copy from one
        # pinned buffer: rows 0..3 are input ids, positions, KV slots, seq lens (and, for a hybrid model,
        # row 4 the sliding group's KV slots); then the block table (then the sliding group's).
        self.max_blocks = max_blocks
        self.num_rows = 5 if sliding else 4
        size = self.num_rows * max_bs + (2 if sliding else 1) * max_bs * max_blocks
        self._device = torch.zeros(size, dtype=i64, device=device)
        self.input_ids = self._device[:max_bs]
        self.positions = self._device[max_bs : 2 * max_bs]
        self.slot_mapping = self._device[2 * max_bs : 3 * max_bs]
        self._seq_lens64 = self._device[3 * max_bs : 4 * max_bs]
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=i32, device=device)
        self.seq_lens = torch.zeros(max_bs, dtype=i32, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=i32, device=device)  # one query per sequence
        if sliding:
            self.sliding_slot_mapping = self._device[4 * max_bs : 5 * max_bs]
            self.sliding_block_tables = torch.zeros(max_bs, max_blocks, dtype=i32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # the split-KV count must serve the longest sequence
            groups=self._sliding_group(bs),
        )

    def _sliding_group(self, bs: int) -> tuple:
        if not self.sliding:
            return ()
        return ((self.sliding_slot_mapping[:bs], self.sliding_block_tables[:bs]),)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle() if torch.cuda.is_available() else None
        for bs in reversed(self.sizes):  # largest first, so the smaller graphs reuse its memory pool
            self.graphs[bs] = self._capture_one(bs, pool)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        log.info(
            "captured %d decode CUDA graphs (batch 1..%d) in %.1f s",
            len(self.sizes),
            self.sizes[-1],
            time.perf_counter() - start,
        )

    def _capture_one(self, bs: int, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        args = (self.input_ids[:bs], self.positions[:bs], self.kv_caches, self._meta(bs))
        self.model(*args)  # warm-up: compiles the kernels for this shape outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self.model(*args)
        return graph, out

    def run(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        seq_lens: list[int],
        table: np.ndarray,
        fixup=None,
        sliding_slots: np.ndarray | None = None,
        sliding_table: np.ndarray | None = None,
    ) -> torch.Tensor:  # [B, hidden]
        """Replay the graph for B sequences (`table`: their [B, width] block table; a hybrid model's
        sliding group's slots [B] and table [B, width] too); `fixup(input_ids)` may patch device-side
        input ids first."""
        B = len(input_ids)
        bs = self.sizes[bisect.bisect_left(self.sizes, B)]
        max_bs = self.sizes[-1]
        width, table_start = table.shape[1], self.num_rows * max_bs
        num_tables = 2 if self.sliding else 1
        # A fresh pinned buffer each step (see host_copy): the previous step's copy may not have run yet.
        size = table_start + num_tables * B * width
        host, staging = host_copy.pinned(size, torch.int64, self._device.device)
        # Padding rows are sequences of length 0: no KV write (slot -1), nothing to attend to. Past the
        # graph's size `bs` the rows are left unset: no graph of this size reads them.
        rows = [(input_ids, 0), (positions, 0), (slots, -1), (seq_lens, 0)]
        if self.sliding:
            rows.append((sliding_slots, -1))
        for i, (row, fill) in enumerate(rows):
            staging[i * max_bs : i * max_bs + B] = row
            staging[i * max_bs + B : i * max_bs + bs] = fill
        table_end = table_start + B * width
        staging[table_start:table_end] = table.reshape(-1)
        if self.sliding:
            staging[table_end:] = sliding_table.reshape(-1)
        self._device[:size].copy_(host, non_blocking=True)
        # int64 -> int32 views the kernels read (block table rows are `width` wide here, max_blocks there)
        self.seq_lens[:bs].copy_(self._seq_lens64[:bs])
        table_view = self._device[table_start:table_end].view(B, width)
        self.block_tables[:B, :width].copy_(table_view)
        if self.sliding:
            sliding_view = self._device[table_end : table_end + B * width].view(B, width)
            self.sliding_block_tables[:B, :width].copy_(sliding_view)
        if fixup is not None:
            fixup(self.input_ids)
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:B]

    def release(self) -> None:
        """Destroy every captured graph (and with the last one, their memory pool). NCCL counts a reference
        on its communicator for each graph that captured one of its collectives (the all-reduces of a
        tensor-parallel run without the custom all-reduce) and tears the communicator down only once they
        are gone: release the graphs before leaving the process group, or that hangs."""
        for graph, _ in self.graphs.values():
            graph.reset()
        self.graphs.clear()
