"""Linear layers that know their tensor-parallel shard (Megatron style).

ColumnParallelLinear splits the output features across ranks (no communication); RowParallelLinear
splits the input features and all-reduces the partial sums. Each parameter carries a `weight_loader`
that copies this rank's slice out of a full checkpoint tensor, so every rank reads only what it owns.

    QKV, tp_size=2, 4 q heads, 2 kv heads:   rank 0: [q0 q1 | k0 | v0]   rank 1: [q2 q3 | k1 | v1]
When there are fewer KV heads than ranks, each KV head is replicated on tp_size / num_kv_heads ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from engine_service.distributed.all_reduce import all_reduce
from engine_service.ops import dispatch as ops


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


class ColumnParallelLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.out_per_rank = divide(out_features, tp_size)
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        param.data.copy_(loaded.narrow(0, self.tp_rank * self.out_per_rank, self.out_per_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored as one matrix (gate and up), each sharded on its own."""

    def __init__(
        self, in_features: int, output_sizes: list[int], bias: bool, tp_rank: int = 0, tp_size: int = 1
    ):
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:  # type: ignore[override]
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, self.tp_rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
    ):
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size)
        # KV heads split across ranks, or replicated when there are fewer of them than ranks.
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        if num_kv_heads >= tp_size:
            divide(num_kv_heads, tp_size)
        else:
            divide(tp_size, num_kv_heads)
        self.total_kv_heads = num_kv_heads
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, out, bias, tp_rank, tp_size)

    def kv_head_of_rank(self) -> int:
        """Index of the first KV head this rank holds (in the checkpoint's numbering)."""
        if self.total_kv_heads >= self.tp_size:
            return self.tp_rank * self.num_kv_heads
        return self.tp_rank * self.total_kv_heads // self.tp_size

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:  # type: ignore[override]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if shard_id == "q":
            dst, src = param.data.narrow(0, 0, q_size), loaded.narrow(0, self.tp_rank * q_size, q_size)
        else:
            offset = q_size if shard_id == "k" else q_size + kv_size
            start = self.kv_head_of_rank() * self.head_dim
            dst, src = param.data.narrow(0, offset, kv_size), loaded.narrow(0, start, kv_size)
        dst.copy_(src)


class RowParallelLinear(nn.Module):
    """`reduce_results=False` returns this rank's partial sums (the bias only on rank 0, so the sum holds it
    once): the caller reduces them, fused with what follows (RMSNorm's `reduce_input`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        reduce_results: bool = True,
    ):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.reduce_results = reduce_results
        self.in_per_rank = divide(in_features, tp_size)
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:  # added once, after the reduction
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = lambda param, loaded: param.data.copy_(loaded[:])  # whole, every rank

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        param.data.copy_(loaded.narrow(1, self.tp_rank * self.in_per_rank, self.in_per_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reduce_results:
            return ops.linear(x, self.weight, self.bias if self.tp_rank == 0 else None)
        out = ops.linear(x, self.weight)
        if self.tp_size > 1:
            out = all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out
