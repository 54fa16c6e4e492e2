"""The benchmark shapes of the newer architectures build and run with dummy weights (FP8 ones included),
their config.json shrunk to CPU size but otherwise as the benchmark writes it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine_service import LLM, SamplingParams
from pagoda.bench.shapes import shape_config

SHRINK = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_experts=8,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def shrunk(name: str) -> dict:
    config = shape_config(name)
    config.update({k: v for k, v in SHRINK.items() if k in config})
    config["head_dim"] = 32
    if config.get("original_max_position_embeddings"):  # longrope: as many factors as rotary_dim / 2
        config["original_max_position_embeddings"] = 128
        half = int(32 * config.get("partial_rotary_factor", 1.0)) // 2
        config["rope_scaling"]["short_factor"] = config["rope_scaling"]["short_factor"][:half]
        config["rope_scaling"]["long_factor"] = config["rope_scaling"]["long_factor"][:half]
    if "num_experts_per_tok" in config:
        config["num_experts_per_tok"] = 2
    return config


@pytest.mark.parametrize(
    "name", ["qwen3-30b-a3b", "gemma-2-9b", "gemma-3-1b", "phi-4-mini", "llama-8b-fp8", "llama-8b-fp8-block"]
)
def test_shape_runs_with_dummy_weights(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(shrunk(name)))
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", load_format="dummy", num_kv_blocks=32)
    out = llm.generate(
        prompt_token_ids=[[5, 6, 7], list(range(3, 40))],
        sampling_params=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=1),
    )
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)
    assert all(math.isfinite(lp.logprob) for o in out for lp in o.outputs[0].logprobs)
    model = llm.engine.runner.model
    if "fp8" in name:  # dequantized on the CPU from dummy e4m3 weights of about N(0, 0.02)
        weight = model.model.layers[0].mlp.down_proj.weight
        assert weight.dtype == torch.float32 and 0.005 < weight.std().item() < 0.05
