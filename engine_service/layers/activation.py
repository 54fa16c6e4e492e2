"""Gated activations over a fused [gate | up] projection: SiLU (Llama family) and tanh-GELU (Gemma)."""

from __future__ import annotations

import torch
from torch import nn

from engine_service.ops import dispatch as ops


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
        return ops.silu_and_mul(x)


class GeluTanhAndMul(nn.Module):
    """gelu(gate) * up with GELU's tanh approximation (`gelu_pytorch_tanh`, Gemma's hidden_activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
        return ops.gelu_tanh_and_mul(x)
