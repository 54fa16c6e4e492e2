"""Rotary position embedding with the scalings Llama-family checkpoints use (default, linear, llama3).
The parameters come parsed from config.json in ModelConfig.rope (core/model_config.py)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine_service.ops import dispatch as ops


def inverse_frequencies(head_dim: int, params: dict[str, Any]) -> torch.Tensor:
    inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = params["rope_type"]
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / params["factor"]
    if kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        middle = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(middle, blended, out)
    raise ValueError(f"rope_type {kind!r} is not supported (supported: default, linear, llama3)")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, params: dict[str, Any]):
        super().__init__()
        inv_freq = inverse_frequencies(head_dim, params)  # [D/2] float64
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # [P, D/2]
        cache = torch.cat((angles.cos(), angles.sin()), dim=-1).float()  # [P, D]
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.rotary_embedding(positions, q, k, self.cos_sin_cache)
