"""Gemma 3 (text): Gemma 2's layers with q/k RMS norms, a local rope base for the sliding layers, and no
soft caps by default. Five sliding layers to one global layer (`sliding_window_pattern` 6, or the
config's `layer_types`).

Rope: global layers use `rope_theta` (1e6) and the config's scaling (the 4B-27B models: linear, factor
8); sliding layers `rope_local_base_freq` (1e4), unscaled. Configs saved by transformers 5 nest both under
`rope_parameters` by layer type instead.
"""

from __future__ import annotations

from typing import Any

from engine_service.layers.rotary import rope_parameters
from engine_service.models.gemma2 import FULL, SLIDING, Gemma2ForCausalLM


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True

    @classmethod
    def layer_types(cls, hf_config: dict[str, Any]) -> list[str]:
        types = hf_config.get("layer_types")
        if types:
            return list(types)
        pattern = hf_config.get("sliding_window_pattern", 6)
        return [SLIDING if (i + 1) % pattern else FULL for i in range(hf_config["num_hidden_layers"])]

    @classmethod
    def rope_by_layer_type(cls, hf_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        nested = hf_config.get("rope_parameters") or {}
        if isinstance(nested.get(FULL), dict) or isinstance(nested.get(SLIDING), dict):
            return {kind: rope_parameters(hf_config, kind) for kind in (SLIDING, FULL)}
        cfg = {**hf_config, "rope_theta": hf_config.get("rope_theta", 1_000_000.0)}
        local = {
            "max_position_embeddings": hf_config.get("max_position_embeddings", 131_072),
            "rope_theta": hf_config.get("rope_local_base_freq", 10_000.0),
        }
        return {SLIDING: rope_parameters(local), FULL: rope_parameters(cfg)}
