"""FP8 (e4m3) weights for the linear layers: parameters, how checkpoint tensors land in them, and the forward.

A quantized layer holds
    weight        float8_e4m3fn [out, in]          (this rank's shard, as an unquantized layer's weight)
    weight_scale  float32 [out]                     one scale per output row: per-tensor checkpoint scales
                                                    are spread over the rows of their shard (q, k and v of a
                                                    fused qkv keep their own), per-channel ones copied
               or float32 [ceil(out/bn), ceil(in/bk)]  block scales (weight_block_size (bn, bk))
    input_scale   float32 []                        static activation scale (activation_scheme "static");
                                                    the largest of the fused shards', as vLLM does
and computes x @ (weight * scale)^T with the activations quantized per token (per 1 x bk group for block
weights) on the GPU (ops.fp8_linear: torch._scaled_mm, or the Triton block GEMM). On the CPU the weights
are dequantized to the model's dtype once loaded and the layer runs as an unquantized one.

Sharding. A column-parallel layer places checkpoint rows [src, src + n) of a shard into its rows
[dst, dst + n); a row-parallel one takes input columns [src, src + n) of every row. Scales follow their
rows (or blocks of rows): block shards must start on a block boundary (published block checkpoints have
every q/k/v/gate/up size a multiple of 128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine_service.core.quant_config import QuantConfig
from engine_service.ops import dispatch as ops

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
DUMMY_WEIGHT_SCALE = 0.02  # random fp8 weights are N(0, 1) draws: times this, the usual N(0, 0.02)


@dataclass(frozen=True)
class Placement:
    """Where one checkpoint tensor (or one shard of it) goes: along `dim` (0: output rows, 1: input
    columns), checkpoint [src, src + length) -> parameter [dst, dst + length)."""

    dim: int
    dst: int
    src: int
    length: int


def create_weights(layer: nn.Module, out_features: int, in_features: int, quant: QuantConfig) -> None:
    """The fp8 parameters of `layer` (a linear layer with a `place(shard_id) -> Placement`)."""
    layer.quant = quant
    layer.params_dtype = torch.get_default_dtype()  # the model's dtype: what the CPU path dequantizes to
    layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
    layer.weight.weight_loader = _loader(layer, _load_online if quant.online else _load_weight)
    if quant.weight_block is None:
        scale = torch.ones(out_features, dtype=torch.float32)
    else:
        bn, bk = quant.weight_block
        scale = torch.ones(math.ceil(out_features / bn), math.ceil(in_features / bk), dtype=torch.float32)
    layer.weight_scale = nn.Parameter(scale, requires_grad=False)
    layer.weight_scale.dummy_value = DUMMY_WEIGHT_SCALE
    if quant.online:  # written by the weight's loader
        layer.weight_scale.optional = True
    else:
        layer.weight_scale.weight_loader = _loader(layer, _load_weight_scale)
    layer.input_scale = None
    if quant.static_input:
        layer.input_scale = nn.Parameter(torch.zeros((), dtype=torch.float32), requires_grad=False)
        layer.input_scale.weight_loader = _loader(layer, _load_input_scale)
        layer.input_scale.dummy_value = 1.0


def _loader(layer: nn.Module, load):
    """A parameter's weight_loader(param, loaded, shard_id=None) over a `load(layer, param, loaded, place)`;
    a fused checkpoint tensor (Phi-3's qkv_proj, shard_id None on a layer with `fused_shards`) is cut into
    its shards' full tensors first: rows of a weight or per-channel scale, block rows of block scales; a
    per-tensor scale goes to every shard."""

    def weight_loader(param: nn.Parameter, loaded, shard_id=None) -> None:
        if shard_id is not None or not hasattr(layer, "fused_shards"):
            load(layer, param, loaded, layer.place(shard_id))
            return
        block = layer.quant.weight_block if load is _load_weight_scale else None
        unit = block[0] if block else 1
        for sub_id, start, size in layer.fused_shards():
            if start % unit:
                raise ValueError(
                    f"a fused shard at row {start} is not aligned to the fp8 weight block of {unit}"
                )
            part = loaded if _numel(loaded) == 1 else loaded[...].narrow(0, start // unit, -(-size // unit))
            load(layer, param, part, layer.place(sub_id))

    return weight_loader


def _numel(t) -> int:
    return math.prod(t.shape)


def _load_weight(layer: nn.Module, param: nn.Parameter, loaded, p: Placement) -> None:
    src = loaded.narrow(p.dim, p.src, p.length)
    if src.dtype != FP8:
        raise ValueError(f"expected a float8_e4m3fn weight in the fp8 checkpoint, got {src.dtype}")
    param.data.narrow(p.dim, p.dst, p.length).copy_(src)


def _load_online(layer: nn.Module, param: nn.Parameter, loaded, p: Placement) -> None:
    """A 16/32-bit weight quantized as it loads: one scale per row of this rank's shard."""
    w = loaded.narrow(p.dim, p.src, p.length).float()  # [n, in] or [out, n]
    q, scale = quantize_rows(w)
    param.data.narrow(p.dim, p.dst, p.length).copy_(q)
    rows = slice(p.dst, p.dst + p.length) if p.dim == 0 else slice(None)
    layer.weight_scale.data[rows] = scale


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 [N, K], float32 [N]) with w ~= q * scale[:, None]: the scale of a row maps its largest |value|
    to e4m3's largest."""
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp_min(1e-12)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def _load_weight_scale(layer: nn.Module, param: nn.Parameter, loaded, p: Placement) -> None:
    block = layer.quant.weight_block
    if block is None:
        values = loaded[...].float().reshape(-1)
        if p.dim == 1:  # row-parallel: every rank holds every output row
            param.data.copy_(values.expand(param.shape[0]) if values.numel() == 1 else values)
        elif values.numel() == 1:  # a per-tensor scale: spread over the shard's rows
            param.data[p.dst : p.dst + p.length] = values
        else:  # per channel
            param.data[p.dst : p.dst + p.length] = values[p.src : p.src + p.length]
        return
    unit = block[p.dim]
    if p.dst % unit or p.src % unit:
        raise ValueError(
            f"a weight shard at offset {p.src} (into {p.dst}) is not aligned to the fp8 weight block of "
            f"{unit}: block-quantized checkpoints need every fused or tensor-parallel shard to be a multiple "
            "of the block size"
        )
    n = -(-p.length // unit)
    param.data.narrow(p.dim, p.dst // unit, n).copy_(loaded.narrow(p.dim, p.src // unit, n))


def _load_input_scale(layer: nn.Module, param: nn.Parameter, loaded, p: Placement) -> None:
    param.data.copy_(torch.maximum(param.data, loaded[...].float().reshape(())))


def process_after_loading(layer: nn.Module) -> None:
    """On the CPU, dequantize the weights to the model's dtype once (the layer then runs unquantized)."""
    if layer.weight.device.type == "cuda":
        return
    weight = dequantize(layer.weight.data, layer.weight_scale.data, layer.quant.weight_block)
    layer.weight = nn.Parameter(weight.to(layer.params_dtype), requires_grad=False)
    layer.weight_scale = layer.input_scale = None
    layer.quant = None


def dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """float32 [N, K] values of an fp8 weight and its row or block scales."""
    if block is None:
        return weight.float() * scale.float()[:, None]
    bn, bk = block
    n, k = weight.shape
    expanded = scale.float().repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    return weight.float() * expanded


def apply(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return ops.fp8_linear(
        x, layer.weight, layer.weight_scale, layer.input_scale, layer.quant.weight_block, bias
    )
