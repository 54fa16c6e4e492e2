"""ModelConfig's typed fields for the families beyond Llama, read as transformers reads the same config.json
(its defaults for the keys a config leaves out, Gemma 3's older form), the quantization of a checkpoint
(config.json or ModelOpt's hf_quant_config.json), and the context each model class serves."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import transformers

from engine_service.core.model_config import FULL, SLIDING, ModelConfig
from engine_service.core.quant_config import ONLINE_FP8, QuantConfig
from engine_service.models.registry import MODELS, max_context

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=256)


def ours(arch: str, **cfg) -> ModelConfig:
    return ModelConfig.from_dict({"architectures": [arch], **SMALL, **cfg})


def test_model_config_imports_no_torch():
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTorch())
import engine_service.core.model_config, engine_service.core.quant_config
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "legacy",
    [
        {},  # every Gemma 3 default: five sliding layers to one global, bases 1e6 and 1e4
        {
            "sliding_window_pattern": 3,
            "rope_theta": 500_000.0,
            "rope_local_base_freq": 20_000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        },
    ],
)
def test_gemma3_older_config_reads_as_transformers_reads_it(legacy):
    """Configs on the hub before transformers 5 name the pattern and the local base; transformers turns
    them into layer_types and rope_parameters per layer type, and so must we."""
    ref = transformers.Gemma3TextConfig(**SMALL, num_hidden_layers=8, **legacy)
    mc = ours("Gemma3ForCausalLM", num_hidden_layers=8, **legacy)
    assert list(mc.layer_types) == ref.layer_types
    for params, kind in ((mc.rope, FULL), (mc.rope_local, SLIDING)):
        expected = ref.rope_parameters[kind]
        assert params["rope_theta"] == expected["rope_theta"]
        assert params["rope_type"] == expected["rope_type"]
        assert params.get("factor") == expected.get("factor")
    assert mc.max_position_embeddings == ref.max_position_embeddings
    assert (mc.query_pre_attn_scalar, mc.hidden_act) == (ref.query_pre_attn_scalar, ref.hidden_activation)
    assert mc.attn_logit_softcapping is None and mc.final_logit_softcapping is None


def test_gemma2_defaults_are_transformers():
    ref = transformers.Gemma2Config(**SMALL, num_hidden_layers=4)
    mc = ours("Gemma2ForCausalLM", num_hidden_layers=4)
    assert list(mc.layer_types) == ref.layer_types == [SLIDING, FULL, SLIDING, FULL]
    assert mc.rope_local is None  # one base for every layer
    assert (mc.attn_logit_softcapping, mc.final_logit_softcapping) == (
        ref.attn_logit_softcapping,
        ref.final_logit_softcapping,
    )
    assert mc.query_pre_attn_scalar == ref.query_pre_attn_scalar


@pytest.mark.parametrize(
    ("arch", "ref_class", "extra"),
    [
        (
            "Qwen3MoeForCausalLM",
            transformers.Qwen3MoeConfig,
            {"decoder_sparse_step": 2, "mlp_only_layers": [3]},
        ),
        ("Qwen2MoeForCausalLM", transformers.Qwen2MoeConfig, {"shared_expert_intermediate_size": 96}),
    ],
)
def test_which_layers_are_sparse_as_transformers_decides(arch, ref_class, extra):
    cfg = dict(num_hidden_layers=6, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, **extra)
    ref = ref_class(**SMALL, **cfg)
    moe = ours(arch, **cfg).moe
    expected = [
        i not in ref.mlp_only_layers and (i + 1) % ref.decoder_sparse_step == 0 for i in range(6)
    ]  # transformers' Qwen{2,3}MoeDecoderLayer
    assert [moe.is_sparse(i) for i in range(6)] == expected
    assert (moe.num_experts, moe.num_experts_per_tok, moe.intermediate_size) == (8, 2, 32)
    assert moe.norm_topk_prob == ref.norm_topk_prob
    assert moe.shared_expert_intermediate_size == extra.get("shared_expert_intermediate_size", 0)


def test_mixtral_experts_and_the_q_k_v_biases_of_qwen2_moe():
    moe = ours("MixtralForCausalLM", num_hidden_layers=2).moe  # every expert key left to its default
    assert (moe.num_experts, moe.num_experts_per_tok, moe.intermediate_size) == (8, 2, 128)
    assert moe.norm_topk_prob and moe.is_sparse(0) and moe.is_sparse(1)
    assert ours("LlamaForCausalLM", num_hidden_layers=2).moe is None
    assert ours("Qwen2MoeForCausalLM", num_hidden_layers=2, num_experts=4, num_experts_per_tok=2).qkv_bias
    assert not ours("Qwen2MoeForCausalLM", num_hidden_layers=2, qkv_bias=False).qkv_bias


def test_quantization_from_config_json_hf_quant_config_json_or_asked_for(tmp_path):
    base = {"architectures": ["LlamaForCausalLM"], **SMALL, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(base))
    assert ModelConfig.from_dir(tmp_path).quantization is None
    assert ModelConfig.from_dir(tmp_path, quantization="fp8").quantization == ONLINE_FP8
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"quantization": {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}})
    )
    modelopt = QuantConfig(method="modelopt", static_input=True, ignored=("lm_head",))
    assert ModelConfig.from_dir(tmp_path).quantization == modelopt
    # a quantized checkpoint runs as it was quantized, whatever was asked for
    assert ModelConfig.from_dir(tmp_path, quantization="fp8").quantization == modelopt
    block = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps({**base, "quantization_config": block}))
    assert ModelConfig.from_dir(tmp_path).quantization == QuantConfig(method="fp8", weight_block=(128, 128))


def test_the_workers_get_the_same_config_pickled(tmp_path):
    cfg = {"architectures": ["Qwen2MoeForCausalLM"], **SMALL, "num_hidden_layers": 2, "num_experts": 4}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_experts_per_tok": 2}))
    mc = ModelConfig.from_dir(tmp_path, supported=MODELS, quantization="fp8")
    assert pickle.loads(pickle.dumps(mc)) == mc


def test_context_each_model_serves():
    window = {"num_hidden_layers": 2, "max_position_embeddings": 4096, "sliding_window": 1024}
    assert max_context(ours("MistralForCausalLM", **window)) == 1024  # full attention: exact within it
    assert max_context(ours("Phi3ForCausalLM", **window)) == 4096  # attends within the window itself
    assert max_context(ours("Gemma2ForCausalLM", **window)) == 4096
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    qwen3 = ours("Qwen3ForCausalLM", num_hidden_layers=2, max_position_embeddings=40960, rope_scaling=yarn)
    assert max_context(qwen3) == 131072
