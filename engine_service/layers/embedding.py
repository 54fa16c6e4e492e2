"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from engine_service.parallel.all_reduce import all_reduce


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
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
        local = input_ids - self.start
        mask = (local >= 0) & (local < self.per_rank)
        out = nn.functional.embedding(local.clamp(0, self.per_rank - 1), self.weight) * mask[:, None]
        return all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over this rank's vocabulary slice, gathered to the full vocabulary."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, hidden] -> [B, vocab]
        logits = nn.functional.linear(hidden, self.weight)
        if self.tp_size > 1:
            parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
            dist.all_gather(parts, logits)
            logits = torch.cat(parts, dim=-1)
        return logits[:, : self.vocab_size]
