"""Model shapes for benchmarks with random weights: Hugging Face configs named after the models they copy.

The benchmark never loads real weights: engines build the model from `config.json` alone (Pagoda's and
vLLM's `load_format="dummy"`, Hugging Face's `from_config`), so a model folder here holds only
`config.json` and `generation_config.json`. The numbers are those of the released models' config files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "pretraining_tp": 1,
    "use_cache": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}

SHAPES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B: 1,235,814,400 parameters
    "llama-1b": {
        **_LLAMA,
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0},
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.1-8B: 8,030,261,248 parameters
    "llama-8b": {
        **_LLAMA,
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0},
        "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-70B: 70.6B parameters (141 GB in bf16: needs tensor parallelism on 80 GB cards)
    "llama-70b": {
        **_LLAMA,
        "vocab_size": 128256,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0},
        "tie_word_embeddings": False,
    },
    # Qwen/Qwen2.5-0.5B: 494,032,768 parameters (Qwen2 always has q/k/v biases)
    "qwen-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "torch_dtype": "bfloat16",
    },
    # Qwen/Qwen3-30B-A3B: 30.5B parameters, 3.3B active (128 experts, 8 a token); 61 GB in bf16: one H100
    # or H200. (The roofline counts its layers as dense MLPs of intermediate_size: read its efficiency so.)
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "max_window_layers": 48,
        "sliding_window": None,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": "bfloat16",
    },
    # google/gemma-2-9b: 9.2B parameters; every other layer attends within 4096 keys, soft caps 50 / 30
    "gemma-2-9b": {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": 256000,
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    },
    # google/gemma-3-1b-it (text only): 1.0B parameters, five 512-key sliding layers to one global layer
    "gemma-3-1b": {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "use_cache": True,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    },
    # microsoft/Phi-4-mini-instruct: 3.8B parameters, longrope over 96 of 128 head dims (partial 0.75).
    # The longrope factors here are made up (48 of each, as the shape needs): throughput does not see them.
    "phi-4-mini": {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": 200064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0 + 0.05 * i for i in range(48)],
            "long_factor": [1.0 + 0.8 * i for i in range(48)],
        },
        "sliding_window": 262144,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "use_cache": True,
        "pad_token_id": 199999,
        "bos_token_id": 199999,
        "eos_token_id": 199999,
        "torch_dtype": "bfloat16",
    },
    # Not a real model: a 2-layer Llama small enough for the CPU smoke test of the harness.
    "tiny": {
        **_LLAMA,
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    },
}


# Llama-3.1-8B with FP8 (e4m3) weights in vLLM's `fp8` format: per-tensor weight scales with dynamic
# activation scales, and the 128 x 128 block layout Qwen3-FP8 / DeepSeek publish. Both engines build the
# FP8 layers from config.json alone (dummy weights).
SHAPES["llama-8b-fp8"] = {
    **SHAPES["llama-8b"],
    "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"},
}
SHAPES["llama-8b-fp8-block"] = {
    **SHAPES["llama-8b"],
    "quantization_config": {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    },
}


def shape_config(name: str) -> dict[str, Any]:
    """A copy of the named shape's config.json contents."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    return json.loads(json.dumps(SHAPES[name]))


def write_model_dir(name: str, path: str | Path) -> Path:
    """Write a weight-less model folder for `name` (config.json + generation_config.json) and return it."""
    config = shape_config(name)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return path


def dummy_llm(name: str, *, dtype: str = "bfloat16", max_model_len: int = 2048, **engine_args):
    """Pagoda's offline LLM for shape `name` with random weights (a fresh model folder in a temporary
    directory). `engine_args` go to LLM as they are (max_num_seqs, tensor_parallel_size, ...)."""
    import tempfile

    from engine_service import LLM

    folder = write_model_dir(name, tempfile.mkdtemp(prefix=f"pagoda-{name}-"))
    return LLM(str(folder), load_format="dummy", dtype=dtype, max_model_len=max_model_len, **engine_args)
