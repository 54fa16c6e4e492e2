"""RMSNorm, optionally fused with the residual add that precedes it (and, under tensor parallelism, with the
all-reduce of the row-parallel layer whose partial sums it receives)."""

from __future__ import annotations

import torch
from torch import nn

from engine_service.distributed.all_reduce import all_reduce_add_rms_norm
from engine_service.ops import dispatch as ops


class RMSNorm(nn.Module):
    """`reduce_input`: an x given with a residual is a row-parallel layer's partial sum on this rank (its
    RowParallelLinear skipped the reduction), summed over the ranks here before the add."""

    def __init__(self, hidden_size: int, eps: float, reduce_input: bool = False):
        super().__init__()
        self.eps = eps
        self.reduce_input = reduce_input
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        if self.reduce_input:
            return all_reduce_add_rms_norm(x, residual, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm scales by (1 + w): the checkpoint stores w, this layer keeps 1 + w in float32 (so
    the shift loses nothing in a 16-bit model) and runs the same kernels as RMSNorm. Dummy weights (1.0)
    are w = 0."""

    def __init__(self, hidden_size: int, eps: float, reduce_input: bool = False):
        super().__init__(hidden_size, eps, reduce_input)
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=torch.float32), requires_grad=False)
        self.weight.weight_loader = lambda param, loaded: param.data.copy_(loaded[...].float() + 1.0)
