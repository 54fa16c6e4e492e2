"""Linear layers that know their tensor-parallel shard (Megatron style).

ColumnParallelLinear splits the output features across ranks (no communication); RowParallelLinear
splits the input features and all-reduces the partial sums. Each parameter carries a `weight_loader`
that copies this rank's slice out of a full checkpoint tensor, so every rank reads only what it owns.

    QKV, tp_size=2, 4 q heads, 2 kv heads:   rank 0: [q0 q1 | k0 | v0]   rank 1: [q2 q3 | k1 | v1]
When there are fewer KV heads than ranks, each KV head is replicated on tp_size / num_kv_heads ranks.

Every layer says where a checkpoint tensor goes with `place(shard_id) -> Placement` (dimension, source and
destination ranges); the weight, bias and FP8 scale loaders all follow it. A checkpoint that stores q/k/v
or gate/up fused in one tensor (Phi-3) is loaded with shard_id None and cut by `fused_shards()`.
With a `quant` config (layers/quantization) the weight is FP8 (see quantization/fp8.py).
"""

from __future__ import annotations

import torch
from torch import nn

from engine_service.core.quant_config import QuantConfig
from engine_service.distributed.all_reduce import all_reduce
from engine_service.layers.quantization import fp8
from engine_service.layers.quantization.fp8 import Placement
from engine_service.ops import dispatch as ops


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


class LinearBase(nn.Module):
    """weight [out, in] of this rank (FP8 with its scales when `quant` is given), optional bias [out]."""

    def __init__(
        self, out_features: int, in_features: int, quant: QuantConfig | None, tp_rank: int, tp_size: int
    ):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.quant = quant
        if quant is None:
            self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
            self.weight.weight_loader = self.weight_loader
        else:
            fp8.create_weights(self, out_features, in_features, quant)

    def place(self, shard_id) -> Placement:
        raise NotImplementedError

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if shard_id is None and hasattr(self, "fused_shards"):  # one checkpoint tensor for several shards
            for sub_id, start, size in self.fused_shards():
                self.weight_loader(param, loaded[...].narrow(0, start, size), sub_id)
            return
        p = self.place(shard_id)
        dim = min(p.dim, param.dim() - 1)  # a bias follows the rows; a row-parallel bias is whole
        if param.dim() == 1 and p.dim == 1:
            param.data.copy_(loaded[...])
            return
        param.data.narrow(dim, p.dst, p.length).copy_(loaded.narrow(dim, p.src, p.length))

    def process_weights_after_loading(self) -> None:
        if self.quant is not None:
            fp8.process_after_loading(self)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quant is not None:
            return fp8.apply(self, x, bias)
        return ops.linear(x, self.weight, bias)


class ColumnParallelLinear(LinearBase):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        quant: QuantConfig | None = None,
    ):
        self.out_per_rank = divide(out_features, tp_size)
        super().__init__(self.out_per_rank, in_features, quant, tp_rank, tp_size)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def place(self, shard_id) -> Placement:
        return Placement(0, 0, self.tp_rank * self.out_per_rank, self.out_per_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored as one matrix (gate and up), each sharded on its own."""

    def __init__(
        self,
        in_features: int,
        output_sizes: list[int],
        bias: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        quant: QuantConfig | None = None,
    ):
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, tp_rank, tp_size, quant)

    def place(self, shard_id: int) -> Placement:
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        return Placement(0, offset, self.tp_rank * size, size)

    def fused_shards(self) -> list[tuple[int, int, int]]:
        """(shard id, first row, rows) of each output in a checkpoint tensor that holds them all."""
        starts = [sum(self.output_sizes[:i]) for i in range(len(self.output_sizes))]
        return [
            (i, start, size) for i, (start, size) in enumerate(zip(starts, self.output_sizes, strict=True))
        ]


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
        quant: QuantConfig | None = None,
    ):
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size)
        # KV heads split across ranks, or replicated when there are fewer of them than ranks.
        self.num_kv_heads = max(1, num_kv_heads // tp_size)
        if num_kv_heads >= tp_size:
            divide(num_kv_heads, tp_size)
        else:
            divide(tp_size, num_kv_heads)
        self.total_heads, self.total_kv_heads = num_heads, num_kv_heads
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, out, bias, tp_rank, tp_size, quant)

    def kv_head_of_rank(self) -> int:
        """Index of the first KV head this rank holds (in the checkpoint's numbering)."""
        if self.total_kv_heads >= self.tp_size:
            return self.tp_rank * self.num_kv_heads
        return self.tp_rank * self.total_kv_heads // self.tp_size

    def place(self, shard_id: str) -> Placement:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if shard_id == "q":
            return Placement(0, 0, self.tp_rank * q_size, q_size)
        offset = q_size if shard_id == "k" else q_size + kv_size
        return Placement(0, offset, self.kv_head_of_rank() * self.head_dim, kv_size)

    def fused_shards(self) -> list[tuple[str, int, int]]:
        q, kv = self.total_heads * self.head_dim, self.total_kv_heads * self.head_dim
        return [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)]


class RowParallelLinear(LinearBase):
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
        quant: QuantConfig | None = None,
    ):
        self.in_per_rank = divide(in_features, tp_size)
        super().__init__(out_features, self.in_per_rank, quant, tp_rank, tp_size)
        self.reduce_results = reduce_results
        self.bias = None
        if bias:  # added once, after the reduction: whole on every rank
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def place(self, shard_id=None) -> Placement:
        return Placement(1, 0, self.tp_rank * self.in_per_rank, self.in_per_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reduce_results:
            return self._matmul(x, self.bias if self.tp_rank == 0 else None)
        out = self._matmul(x, None)
        if self.tp_size > 1:
            out = all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out
