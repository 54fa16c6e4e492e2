"""SiLU(gate) * up over a fused [gate | up] projection."""

from __future__ import annotations

import torch
from torch import nn

from engine_service.ops import dispatch as ops


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
        return ops.silu_and_mul(x)
