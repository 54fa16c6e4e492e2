"""Tiny checkpoints for the tensor-parallel tests, shaped so that every sharding path is taken.

    llama   4 q / 2 kv heads (split 1 + 1 at TP=2), tied embeddings, vocab 251 (not divisible: padded shard)
    qwen2   q/k/v biases, untied LM head
    kv1     one KV head (replicated on both ranks at TP=2), Qwen3's q/k norms
    moe     Qwen2-MoE: every expert's intermediate dimension split across the ranks, a shared expert
    gemma2  sandwich norms (reduced before their post-norms), sliding window, soft caps
    phi3    fused qkv_proj / gate_up_proj checkpoint tensors, cut and sharded as they load

Weights are drawn wider than Hugging Face's 0.02 so that greedy decoding does not just repeat a token,
and top-2 logit gaps stay far above float32 rounding (TP sums partial products in another order).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=251,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    eos_token_id=2,
    bos_token_id=1,
)

MODELS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
    "kv1": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(num_key_value_heads=1)),
    "moe": (
        transformers.Qwen2MoeConfig,
        transformers.Qwen2MoeForCausalLM,
        dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48
        ),
    ),
    "gemma2": (
        transformers.Gemma2Config,
        transformers.Gemma2ForCausalLM,
        dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=5.0),
    ),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(pad_token_id=0)),
}


def make_model(folder: Path, name: str, seed: int = 0) -> Path:
    config_class, model_class, extra = MODELS[name]
    torch.manual_seed(seed)
    model = model_class(config_class(**{**COMMON, **extra})).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" not in param_name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tp_models(tmp_path_factory) -> dict[str, Path]:
    return {name: make_model(tmp_path_factory.mktemp(f"tp-{name}"), name) for name in MODELS}
