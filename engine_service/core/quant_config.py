"""QuantConfig: how a checkpoint's linear layers are quantized, read with config.json (ModelConfig.from_dir).

Formats Pagoda runs, all FP8 (e4m3):

    fp8                 vLLM's format (llm-compressor's older exports, Qwen3-FP8, DeepSeek-V3): e4m3 weights
                        with per-tensor `weight_scale`, or 128x128 blocks (`weight_block_size`,
                        `weight_scale_inv`); `input_scale` when the activations are static
    compressed-tensors  float-quantized FP8 schemes: per-tensor, per-channel or block weight scales,
                        static per-tensor or dynamic per-token activations (RedHatAI's FP8 models)
    modelopt            NVIDIA ModelOpt FP8 (per-tensor weights, static activation scales) and
                        FP8_PER_CHANNEL_PER_TOKEN; in config.json or in ModelOpt's hf_quant_config.json
    online              a 16/32-bit checkpoint quantized as it loads (EngineConfig.quantization = "fp8"):
                        per-channel weights, dynamic per-token activations

Everything else (AWQ, GPTQ, bitsandbytes, int8 or 4-bit schemes, NVFP4...) is a ValueError here, one
sentence that names it, before any weight is read. The layers that run these live in layers/quantization.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

SUPPORTED = "fp8, compressed-tensors (FP8 schemes), modelopt (FP8)"


@dataclass(frozen=True)
class QuantConfig:
    """How a checkpoint's FP8 linear layers are laid out (see the module doc)."""

    method: str  # fp8 | compressed-tensors | modelopt | online
    weight_block: tuple[int, int] | None = None  # (rows, cols) of one weight scale; None: a scale per row
    static_input: bool = False  # a per-tensor activation scale in the checkpoint; else dynamic
    ignored: tuple[str, ...] = ()  # modules left unquantized: names, or "re:<pattern>"
    online: bool = False  # the checkpoint is 16/32-bit: weights are quantized as they load

    def for_module(self, name: str) -> QuantConfig | None:
        """This config for the module `name` (checkpoint naming, e.g. model.layers.0.self_attn.q_proj), or
        None if the checkpoint left it unquantized."""
        for pattern in self.ignored:
            if pattern.startswith("re:"):
                if re.match(pattern[3:], name):
                    return None
            elif name == pattern or name.endswith("." + pattern) or name.startswith(pattern + "."):
                return None
        return self


ONLINE_FP8 = QuantConfig(method="online", online=True)


def parse_quantization(qc: dict[str, Any] | None, requested: str | None) -> QuantConfig | None:
    """The checkpoint's quantization (`qc`: config.json's `quantization_config`, or ModelOpt's
    hf_quant_config.json made into one), else the on-load one asked for (`requested`: "fp8"), else None.
    A quantized checkpoint runs as it was quantized: `requested` does not apply to it."""
    if qc is None:
        if requested is None:
            return None
        if requested != "fp8":
            raise ValueError(f"quantization {requested!r} is not supported (supported: fp8)")
        return ONLINE_FP8
    method = str(qc.get("quant_method", "")).lower()
    parsers = {"fp8": _fp8, "compressed-tensors": _compressed_tensors, "modelopt": _modelopt}
    if method not in parsers:
        raise ValueError(
            f"the checkpoint is quantized with {method!r}, which is not supported (supported: {SUPPORTED})"
        )
    return parsers[method](qc)


def modelopt_quantization_config(exported: dict[str, Any]) -> dict[str, Any]:
    """hf_quant_config.json (ModelOpt's export beside config.json) as a `quantization_config`."""
    return {"quant_method": "modelopt", **exported.get("quantization", {})}


def _fp8(qc: dict[str, Any]) -> QuantConfig:
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme not in ("static", "dynamic"):
        raise ValueError(f"fp8 activation_scheme {scheme!r} is not supported (supported: static, dynamic)")
    block = qc.get("weight_block_size")
    if block is not None and scheme == "static":
        raise ValueError("fp8 checkpoints with weight_block_size need activation_scheme 'dynamic'")
    ignored = qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []
    return QuantConfig(
        method="fp8",
        weight_block=tuple(block) if block else None,
        static_input=scheme == "static",
        ignored=tuple(ignored),
    )


def _compressed_tensors(qc: dict[str, Any]) -> QuantConfig:
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
    return QuantConfig(
        method="compressed-tensors",
        weight_block=block,
        static_input=static,
        ignored=tuple(qc.get("ignore") or []),
    )


def _modelopt(qc: dict[str, Any]) -> QuantConfig:
    algo = str(qc.get("quant_algo", "")).upper()
    if algo not in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
        raise ValueError(f"the modelopt checkpoint's quant_algo {algo!r} is not supported (supported: FP8)")
    ignored = tuple(qc.get("exclude_modules") or qc.get("ignore") or [])
    return QuantConfig(method="modelopt", static_input=algo == "FP8", ignored=ignored)
