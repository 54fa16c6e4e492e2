"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from engine_service.distributed.all_reduce import all_reduce
from engine_service.ops import dispatch as ops


class VocabParallelEmbedding(nn.Module):
    """`reduce_results=False`: under tensor parallelism return this rank's part of the lookup (zeros for the
    tokens it does not hold), for the caller to sum over the ranks fused with what follows (LlamaModel hands
    it to the first layer's input norm as a partial sum)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        reduce_results: bool = True,
    ):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.reduce_results = reduce_results
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp_size)  # the last rank's slice is padded
        self.start = tp_rank * self.per_rank
        self.weight = nn.Parameter(torch.zeros(self.per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        rows = max(0, min(self.per_rank, self.vocab_size - self.start))
        param.data[:rows].copy_(loaded.narrow(0, self.start, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        if self.tp_size == 1:
            return nn.functional.embedding(input_ids, self.weight)
        out = ops.vocab_slice_embedding(input_ids, self.weight, self.start)
        return all_reduce(out) if self.reduce_results else out


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over this rank's vocabulary slice, gathered to the full vocabulary."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, hidden] -> [B, vocab]
        logits = nn.functional.linear(hidden, self.weight)
        if self.tp_size > 1:
            # One gather into [rank, B, slice]: a row's slices side by side are its full logits. At B = 1
            # that is already the [1, vocab] layout (no copy); a larger batch takes one transposing copy.
            batch, per_rank = logits.shape
            gathered = logits.new_empty(self.tp_size * batch, per_rank)
            dist.all_gather_into_tensor(gathered, logits)
            logits = gathered.view(self.tp_size, batch, per_rank).transpose(0, 1).reshape(batch, -1)
        return logits[:, : self.vocab_size]
