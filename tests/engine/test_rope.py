"""Rope scalings against transformers' own rope init functions (inverse frequencies and attention factor),
and the position-wise choices made where transformers depends on the batch (longrope, dynamic NTK)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from engine_service.core.model_config import rope_parameters
from engine_service.layers.rotary import cos_sin_table, inverse_frequencies, rope_max_positions

HEAD_DIM = 64
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
    "long_factor": [1.5 + 0.3 * i for i in range(HEAD_DIM // 2)],
}
CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 512,
        "mscale": 1.0,
        "mscale_all_dim": 0.7,
        "beta_fast": 16,
        "beta_slow": 2,
    },
    "yarn-attention-factor": {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 1024,
        "attention_factor": 1.3,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": LONGROPE,
}


def hf_config(rope: dict, **extra) -> transformers.PreTrainedConfig:
    return transformers.LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        max_position_embeddings=4096,
        rope_parameters={"rope_theta": 10000.0, **rope},
        **extra,
    )


def ours(config: transformers.PreTrainedConfig) -> dict:
    return rope_parameters(config.to_dict())


@pytest.mark.parametrize("case", list(CASES))
def test_inverse_frequencies_match_transformers(case):
    config = hf_config(
        CASES[case], **({"original_max_position_embeddings": 1024} if case == "longrope" else {})
    )
    params = ours(config)
    seq_len = rope_max_positions(params)  # transformers' dynamic NTK takes the length of the context
    ref_freq, ref_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)
    freq, factor = inverse_frequencies(HEAD_DIM, params, seq_len)
    torch.testing.assert_close(freq.float(), ref_freq.float(), rtol=1e-5, atol=0)
    assert factor == pytest.approx(ref_factor, rel=1e-6)


def test_longrope_short_factors_inside_the_pretraining_length_long_ones_past_it():
    config = hf_config(LONGROPE, original_max_position_embeddings=1024)
    params = ours(config)
    assert params["original_max_position_embeddings"] == 1024  # the top-level one, as transformers reads it
    short, factor = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=None)
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=2000)
    assert factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(1024)))  # 4096 / 1024
    table = cos_sin_table(HEAD_DIM, 2000, params)  # [P, D]: cos | sin, times the attention factor
    for pos, freq in ((1023, short), (1024, long), (1999, long)):
        angles = pos * freq.double()  # transformers' frequencies are float32: ~1e-7 relative, times ~2000
        expected = torch.cat((angles.cos(), angles.sin())) * factor
        torch.testing.assert_close(table[pos].double(), expected, rtol=0, atol=2e-4)


def test_context_each_scaling_serves():
    yarn = ours(hf_config({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}))
    assert rope_max_positions(yarn) == 131072  # Qwen3's recipe: 32k pre-training, factor 4
    assert rope_max_positions(ours(hf_config({"rope_type": "dynamic", "factor": 2.0}))) == 8192
    assert rope_max_positions(ours(hf_config({"rope_type": "linear", "factor": 4.0}))) == 4096


def test_old_style_rope_scaling_and_su_alias():
    params = rope_parameters(
        {"max_position_embeddings": 4096, "rope_theta": 500.0, "rope_scaling": {"type": "su", **LONGROPE}}
    )
    assert params["rope_type"] == "longrope" and params["rope_theta"] == 500.0
    assert params["original_max_position_embeddings"] == 4096
