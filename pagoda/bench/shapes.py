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
