"""Tiny random checkpoints of the architectures beyond the Llama family, made with transformers.

Weights are drawn wider than Hugging Face's 0.02 (and norm weights away from their init) so that what
distinguishes an architecture really moves the logits: Gemma's (1 + w) norms, its soft caps (small caps,
so tanh bends), routing between experts, the shared expert's gate. Windows and the longrope pre-training
length are short, so prompts of 40 tokens run past them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    eos_token_id=2,
    bos_token_id=1,
    pad_token_id=0,
)

WINDOW = 8  # Gemma's sliding layers and Phi-3's window: prompts run well past it


def _gemma2():
    return transformers.Gemma2Config(
        **{**BASE, "num_hidden_layers": 3},
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=WINDOW,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=2.0,
    )


def _gemma3():
    return transformers.Gemma3TextConfig(
        **{**BASE, "num_hidden_layers": 4},
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )


def _phi3():
    half_rotary = 16 * 3 // 4 // 2  # head_dim 16, partial_rotary_factor 0.75 (as Phi-4-mini)
    return transformers.Phi3Config(
        **BASE,
        sliding_window=WINDOW,
        original_max_position_embeddings=64,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(half_rotary)],
            "long_factor": [2.0 + 0.5 * i for i in range(half_rotary)],
            "partial_rotary_factor": 0.75,
        },
        tie_word_embeddings=True,
    )


def _qwen3_moe():
    return transformers.Qwen3MoeConfig(
        **BASE,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        mlp_only_layers=[1],  # a dense layer beside the sparse one
    )


def _mixtral():
    return transformers.MixtralConfig(**BASE, num_local_experts=4, num_experts_per_tok=2)


def _qwen2_moe():
    return transformers.Qwen2MoeConfig(
        **BASE,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        norm_topk_prob=False,
    )


def _qwen3_yarn():
    return transformers.Qwen3Config(
        **{**BASE, "max_position_embeddings": 64},
        head_dim=16,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 10000.0,
        },
    )


CONFIGS = {
    "gemma2": (_gemma2, transformers.Gemma2ForCausalLM),
    "gemma3": (_gemma3, transformers.Gemma3ForCausalLM),
    "phi3": (_phi3, transformers.Phi3ForCausalLM),
    "qwen3_moe": (_qwen3_moe, transformers.Qwen3MoeForCausalLM),
    "mixtral": (_mixtral, transformers.MixtralForCausalLM),
    "qwen2_moe": (_qwen2_moe, transformers.Qwen2MoeForCausalLM),
    "qwen3_yarn": (_qwen3_yarn, transformers.Qwen3ForCausalLM),
}


def make_arch_model(folder: Path, arch: str, seed: int = 0, **save_kwargs) -> transformers.PreTrainedModel:
    make_config, model_class = CONFIGS[arch]
    torch.manual_seed(seed)
    model = model_class(make_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # Gemma scales by (1 + w), the others by w: away from their inits either way
                param.normal_(0.0 if arch.startswith("gemma") else 1.0, 0.3)
            else:
                param.normal_(0.0, 0.15)
    model.save_pretrained(folder, **save_kwargs)
    return model
