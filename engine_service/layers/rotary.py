"""Rotary position embedding and the scalings Hugging Face checkpoints use to stretch its context.

    default   theta^(-2i/d)
    linear    every frequency divided by `factor` (positions interpolated)
    llama3    Llama 3.1: high frequencies kept, low ones divided by `factor`, a smooth blend between
    yarn      YaRN (Qwen2.5 / Qwen3 past 32k, DeepSeek): per-dimension blend of interpolation and
              extrapolation by wavelength, cos/sin multiplied by an attention factor (mscale)
    dynamic   dynamic NTK: a larger theta, so low frequencies stretch while high ones stay
    longrope  LongRoPE / "su" (Phi-3, Phi-3.5, Phi-4-mini): per-dimension factors, `short_factor` for
              positions inside the pre-training context and `long_factor` past it, cos/sin times an
              attention factor

A rotary embedding here is one table of (cos, sin) per position, computed once at start-up in float64:
the kernels only gather rows of it. Two scalings in transformers depend on the length of the current
batch rather than on a position (dynamic NTK recomputes theta for the longest sequence; longrope switches
every position to the long factors once a sequence passes the pre-training length). A paged cache keeps
keys rotated at the step they were written, so both are made functions of the position here, as vLLM does:
dynamic NTK uses the theta transformers computes for the longest context the engine serves, longrope the
short factors below `original_max_position_embeddings` and the long ones from there on. Within the
pre-training context both match transformers exactly (dynamic NTK: see `rope_max_positions`).

`partial_rotary_factor` (Phi-4-mini: 0.75) rotates only the first `rotary_dim` dimensions of each head.

The parameters come parsed from config.json, one flat dict per rotary embedding (ModelConfig.rope and
rope_local, core/model_config.py: rope_parameters), their type already checked against ROPE_TYPES there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine_service.core.model_config import ROPE_TYPES
from engine_service.ops import dispatch as ops


def rope_max_positions(params: dict[str, Any]) -> int:
    """The longest context this rotary embedding serves.

    yarn: the pre-training length times `factor` (Qwen's recipe adds yarn with factor 4 over 32k and
    keeps `max_position_embeddings` at 32k or 40k); dynamic NTK: `max_position_embeddings` times `factor`.
    Every other type: `max_position_embeddings` (Llama 3.1 and Phi-3 already write the stretched length)."""
    max_positions = params["max_position_embeddings"]
    kind = params["rope_type"]
    if kind == "yarn" and params.get("factor"):
        return max(max_positions, int(params["original_max_position_embeddings"] * params["factor"]))
    if kind == "dynamic":
        return int(max_positions * params["factor"])
    return max_positions


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [dim/2]


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    middle = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(middle, blended, out)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature, 0.1 * mscale * ln(scale) + 1 (eq. 21 of the paper)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Interpolate the dimensions whose wavelength exceeds the pre-training context (factor), extrapolate
    the fast ones, with a linear ramp between the `beta_fast` and `beta_slow` rotation counts."""
    theta, factor = params["rope_theta"], params["factor"]
    original = params["original_max_position_embeddings"]
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all:
            attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
        else:
            attention = yarn_mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = _base_inv_freq(theta, dim)
    keep = 1 - ramp  # 1: extrapolate (fast dimensions), 0: interpolate
    return extrapolation / factor * (1 - keep) + extrapolation * keep, float(attention)


def _dynamic_ntk(dim: int, params: dict[str, Any], seq_len: int) -> torch.Tensor:
    """theta grown for a context of `seq_len` positions (transformers' formula at that length)."""
    factor, max_positions = params["factor"], params["max_position_embeddings"]
    seq_len = max(seq_len, max_positions)
    theta = params["rope_theta"] * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(theta, dim)


def _longrope(dim: int, params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(short inv_freq, long inv_freq, attention factor)."""
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or params["max_position_embeddings"] / original
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    base = _base_inv_freq(params["rope_theta"], dim)
    short = torch.tensor(params["short_factor"], dtype=torch.float64)
    long = torch.tensor(params["long_factor"], dtype=torch.float64)
    for name, factors in (("short_factor", short), ("long_factor", long)):
        if factors.shape != base.shape:
            raise ValueError(
                f"longrope {name} has {factors.numel()} entries; the rotary dimension needs {dim // 2}"
            )
    return base / short, base / long, float(attention)


def inverse_frequencies(
    dim: int, params: dict[str, Any], seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """(inv_freq float64 [dim/2], attention factor) of one scaling; longrope gives its short factors, or its
    long ones when `seq_len` passes the pre-training length (transformers' choice for that length)."""
    kind = params["rope_type"]
    if kind in ("default", "linear", "llama3"):
        inv_freq = _base_inv_freq(params["rope_theta"], dim)
        if kind == "linear":
            inv_freq = inv_freq / params["factor"]
        elif kind == "llama3":
            inv_freq = _llama3(inv_freq, params)
        return inv_freq, 1.0
    if kind == "yarn":
        return _yarn(dim, params)
    if kind == "dynamic":
        return _dynamic_ntk(dim, params, seq_len or rope_max_positions(params)), 1.0
    if kind != "longrope":  # ModelConfig refuses other types: this is a caller's mistake
        raise ValueError(f"rope type {kind!r} is not one of {ROPE_TYPES}")
    short, long, attention = _longrope(dim, params)
    use_long = seq_len is not None and seq_len > params["original_max_position_embeddings"]
    return (long if use_long else short), attention


def cos_sin_table(dim: int, max_positions: int, params: dict[str, Any]) -> torch.Tensor:
    """float32 [max_positions, dim]: cos(p * f_i) * a in [:, :dim/2] and sin(...) * a in [:, dim/2:]."""
    positions = torch.arange(max_positions, dtype=torch.float64)
    if params["rope_type"] == "longrope":
        short, long, attention = _longrope(dim, params)
        original = params["original_max_position_embeddings"]
        inv_freq = torch.where((positions < original)[:, None], short[None, :], long[None, :])  # [P, dim/2]
        angles = positions[:, None] * inv_freq
    else:
        inv_freq, attention = inverse_frequencies(dim, params)
        angles = torch.outer(positions, inv_freq)  # [P, dim/2]
    return (torch.cat((angles.cos(), angles.sin()), dim=-1) * attention).float()


class RotaryEmbedding(nn.Module):
    """Neox-style rotation of the first `rotary_dim` dimensions of every q and k head."""

    def __init__(self, head_dim: int, max_positions: int, params: dict[str, Any]):
        super().__init__()
        self.rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        cache = cos_sin_table(self.rotary_dim, max_positions, params)  # [P, rotary_dim]
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.rotary_embedding(positions, q, k, self.cos_sin_cache)
