"""CUDA graphs for decode-only steps: one graph per padded batch size, captured at start-up.

A decode step of a small model is mostly launch overhead: dozens of kernels per layer, each a few
microseconds of work. Capturing the whole forward pass once per batch size turns a step into one replay.
The graphs read persistent input buffers; a step copies its inputs into them and pads the batch up to the
next captured size (padding rows are sequences of length 0: they write no KV (slot -1) and attend to nothing).

    sizes: 1 2 4 8 16 24 ... max_num_seqs (rounded up to a multiple of 8)
"""

from __future__ import annotations

import bisect
import logging
import time

import torch
from torch import nn

from engine_service.layers.attention import AttentionMetadata

log = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    top = -(-max_num_seqs // 8) * 8
    return [s for s in (1, 2, 4) if s < top] + list(range(8, top + 1, 8))


class DecodeGraphs:
    def __init__(
        self, model: nn.Module, kv_caches: list, max_num_seqs: int, max_model_len: int, block_size: int,
        device: torch.device,
    ):
        self.model, self.kv_caches = model, kv_caches
        self.sizes = capture_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        max_bs, max_blocks = self.sizes[-1], -(-max_model_len // block_size)
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(max_bs, dtype=i64, device=device)
        self.positions = torch.zeros(max_bs, dtype=i64, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=i64, device=device)
        self.seq_lens = torch.zeros(max_bs, dtype=i32, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=i32, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=i32, device=device)  # one query per sequence
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
        )

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):  # largest first, so the smaller graphs reuse its memory pool
            args = (self.input_ids[:bs], self.positions[:bs], self.kv_caches, self._meta(bs))
            self.model(*args)  # warm-up: compiles the kernels for this shape outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(*args)
            self.graphs[bs] = (graph, out)
        torch.cuda.synchronize()
        log.info("captured %d decode CUDA graphs (batch 1..%d) in %.1f s", len(self.sizes), self.sizes[-1],
                 time.perf_counter() - start)

    def run(
        self, input_ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
        block_tables: list[list[int]],
    ) -> torch.Tensor:  # [B, hidden]
        B = len(input_ids)
        bs = self.sizes[bisect.bisect_left(self.sizes, B)]
        width = max(len(t) for t in block_tables)
        table = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32)
        host = torch.tensor([input_ids, positions, slots], dtype=torch.int64)
        self.input_ids[:B].copy_(host[0], non_blocking=True)
        self.positions[:B].copy_(host[1], non_blocking=True)
        self.slot_mapping[:B].copy_(host[2], non_blocking=True)
        self.seq_lens[:B].copy_(torch.tensor(seq_lens, dtype=torch.int32), non_blocking=True)
        self.block_tables[:B, :width].copy_(table, non_blocking=True)
        if bs > B:  # padding rows: their own empty sequences, no KV write, zeros out
            self.slot_mapping[B:bs].fill_(-1)
            self.seq_lens[B:bs].fill_(0)
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:B]
