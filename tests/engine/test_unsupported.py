"""A checkpoint that needs something Pagoda does not run fails at start with one sentence that names it
(never a tensor that 'matches no parameter' halfway through loading)."""

from __future__ import annotations

import json

import pytest

from engine_service import LLM
from engine_service.models.llama import LlamaForCausalLM
from engine_service.models.registry import MODELS

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 128,
}

CASES = {
    "architecture": (
        {"architectures": ["GPT2LMHeadModel"]},
        "architecture 'GPT2LMHeadModel' is not supported",
    ),
    "awq": (
        {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}},
        "quantized with 'awq', which is not supported",
    ),
    "gptq": (
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        "quantized with 'gptq', which is not supported",
    ),
    "bitsandbytes": (
        {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
        "quantized with 'bitsandbytes', which is not supported",
    ),
    "compressed-tensors int8": (
        {
            "quantization_config": {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "group_0": {"targets": ["Linear"], "weights": {"type": "int", "num_bits": 8}}
                },
            }
        },
        "compressed-tensors scheme with int8 weights is not supported",
    ),
    "modelopt nvfp4": (
        {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}},
        "quant_algo 'NVFP4' is not supported",
    ),
    "rope type": (
        {"rope_scaling": {"rope_type": "mrope", "mrope_section": [16, 24, 24]}},
        "rope scaling type 'mrope' is not supported",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fails_at_start_naming_what_is_unsupported(tmp_path, case):
    extra, message = CASES[case]
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, **extra}))
    # No weights at all: the check must come before any tensor is read.
    with pytest.raises(ValueError, match=message) as err:
        LLM(str(tmp_path), device="cpu")
    assert "matches no parameter" not in str(err.value)


def test_a_registered_model_without_fp8_support_refuses_an_fp8_checkpoint(tmp_path, monkeypatch):
    """A model class registered from outside says whether it loads FP8 weights; if not, the engine refuses
    the checkpoint at start in one sentence (every built-in architecture loads them)."""

    class NoFp8ForCausalLM(LlamaForCausalLM):
        fp8_checkpoints = False

    monkeypatch.setitem(MODELS, "NoFp8ForCausalLM", NoFp8ForCausalLM)
    quant = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    config = {**LLAMA, "architectures": ["NoFp8ForCausalLM"], "quantization_config": quant}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"FP8 checkpoints \(fp8 format\) of NoFp8ForCausalLM are not supported"
    ):
        LLM(str(tmp_path), device="cpu")


def test_unknown_quantization_and_kv_cache_dtype_flags(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(ValueError, match="quantization must be fp8"):
        LLM(str(tmp_path), device="cpu", quantization="int4")
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or fp8"):
        LLM(str(tmp_path), device="cpu", kv_cache_dtype="int8")


def test_modelopt_algorithm_from_hf_quant_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "W4A8_AWQ"}})
    )
    with pytest.raises(ValueError, match="quant_algo 'W4A8_AWQ' is not supported"):
        LLM(str(tmp_path), device="cpu")
