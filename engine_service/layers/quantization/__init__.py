"""Quantized linear layers: FP8 (e4m3) weights, how checkpoint tensors land in them, and their forward
(fp8.py). Which checkpoint formats these run is read with config.json, into ModelConfig.quantization
(core/quant_config.py: QuantConfig)."""
