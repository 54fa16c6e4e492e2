"""Quantized checkpoints: which formats Pagoda runs, read once from config.json (or ModelOpt's
hf_quant_config.json) into one small frozen config that the linear layers are built with.

    fp8                 vLLM's format (llm-compressor's older exports, Qwen3-FP8, DeepSeek-V3): e4m3 weights
                        with per-tensor `weight_scale`, or 128x128 blocks (`weight_block_size`,
                        `weight_scale_inv`); `input_scale` when the activations are static
    compressed-tensors  float-quantized FP8 schemes: per-tensor, per-channel or block weight scales,
                        static per-tensor or dynamic per-token activations (RedHatAI's FP8 models)
    modelopt            NVIDIA ModelOpt FP8 (per-tensor weights, static activation scales) and
                        FP8_PER_CHANNEL_PER_TOKEN
    --quantization fp8  a 16/32-bit checkpoint quantized on load: per-channel weights, dynamic per-token
                        activations

Everything else (AWQ, GPTQ, bitsandbytes, int8 or 4-bit schemes, NVFP4...) fails at start with a sentence
that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine_service.layers.quantization.fp8 import Fp8Config

SUPPORTED = "fp8, compressed-tensors (FP8 schemes), modelopt (FP8)"


def quant_config(
    hf_config: dict[str, Any], folder: str | Path | None, quantization: str | None
) -> Fp8Config | None:
    """The checkpoint's quantization (config.json `quantization_config`, else ModelOpt's
    hf_quant_config.json), or the on-load one asked for (`quantization="fp8"`), or None."""
    qc = hf_config.get("quantization_config")
    if qc is None and folder is not None and (Path(folder) / "hf_quant_config.json").is_file():
        exported = json.loads((Path(folder) / "hf_quant_config.json").read_text())
        qc = {"quant_method": "modelopt", **exported.get("quantization", {})}
    if qc is None:
        if quantization is None:
            return None
        if quantization != "fp8":
            raise ValueError(f"quantization {quantization!r} is not supported (supported: fp8)")
        return Fp8Config(method="online", online=True)
    method = str(qc.get("quant_method", "")).lower()
    parsers = {"fp8": _fp8, "compressed-tensors": _compressed_tensors, "modelopt": _modelopt}
    if method not in parsers:
        raise ValueError(
            f"the checkpoint is quantized with {method!r}, which is not supported (supported: {SUPPORTED})"
        )
    return parsers[method](qc)


def _fp8(qc: dict[str, Any]) -> Fp8Config:
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme not in ("static", "dynamic"):
        raise ValueError(f"fp8 activation_scheme {scheme!r} is not supported (supported: static, dynamic)")
    block = qc.get("weight_block_size")
    if block is not None and scheme == "static":
        raise ValueError("fp8 checkpoints with weight_block_size need activation_scheme 'dynamic'")
    ignored = qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []
    return Fp8Config(
        method="fp8",
        weight_block=tuple(block) if block else None,
        static_input=scheme == "static",
        ignored=tuple(ignored),
    )


def _compressed_tensors(qc: dict[str, Any]) -> Fp8Config:
    groups = [g for g in (qc.get("config_groups") or {}).values() if g.get("weights")]
    if not groups:
        raise ValueError("the compressed-tensors checkpoint has no config_groups with weights")
    schemes = {json.dumps([g.get("weights"), g.get("input_activations")], sort_keys=True) for g in groups}
    if len(schemes) > 1:
        raise ValueError("compressed-tensors checkpoints with several quantization schemes are not supported")
    weights, inputs = groups[0]["weights"], groups[0].get("input_activations")
    if weights.get("type") != "float" or weights.get("num_bits") != 8:
        kind = f"{weights.get('type')}{weights.get('num_bits')}"
        raise ValueError(
            f"the compressed-tensors scheme with {kind} weights is not supported (supported: float8 weights)"
        )
    strategy = weights.get("strategy", "tensor")
    if strategy not in ("tensor", "channel", "block"):
        raise ValueError(f"compressed-tensors weight strategy {strategy!r} is not supported")
    if inputs is not None and (inputs.get("type") != "float" or inputs.get("num_bits") != 8):
        raise ValueError("compressed-tensors activations other than float8 are not supported")
    static = inputs is not None and not inputs.get("dynamic", False)
    block = tuple(weights["block_structure"]) if strategy == "block" else None
    if block is not None and static:
        raise ValueError("compressed-tensors block-quantized weights need dynamic activations")
    # Weight-only FP8 (no input_activations) runs as W8A8 with dynamic per-token activation scales.
    return Fp8Config(
        method="compressed-tensors",
        weight_block=block,
        static_input=static,
        ignored=tuple(qc.get("ignore") or []),
    )


def _modelopt(qc: dict[str, Any]) -> Fp8Config:
    algo = str(qc.get("quant_algo", "")).upper()
    if algo not in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
        raise ValueError(f"the modelopt checkpoint's quant_algo {algo!r} is not supported (supported: FP8)")
    ignored = tuple(qc.get("exclude_modules") or qc.get("ignore") or [])
    return Fp8Config(method="modelopt", static_input=algo == "FP8", ignored=ignored)


__all__ = ["SUPPORTED", "Fp8Config", "quant_config"]
