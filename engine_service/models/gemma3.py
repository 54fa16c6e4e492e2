"""Gemma 3 (text): Gemma 2's layers with q/k RMS norms, a local rope base for the sliding layers, and no
soft caps by default. Five sliding layers to one global layer (`sliding_window_pattern` 6, or the
config's `layer_types`).

Rope: global layers use `rope_theta` (1e6) and the config's scaling (the 4B-27B models: linear, factor
8); sliding layers `rope_local_base_freq` (1e4), unscaled. Configs saved by transformers 5 nest both under
`rope_parameters` by layer type instead. ModelConfig reads either form into `rope` and `rope_local`, with
Gemma 3's defaults for what config.json leaves out; the layers are Gemma 2's.
"""

from __future__ import annotations

from engine_service.models.gemma2 import Gemma2ForCausalLM


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True
