"""A tiny Llama whose greedy output is scripted, with the default model's tokenizer, for the service tests.

"Scripted": every layer adds nothing to the residual stream (o_proj and down_proj are zero), so the
logits depend on the current token alone, and the LM head maps each script token to the next one:

    embed[t_i] = e_i (a unit vector)      lm_head[succ(t_i)] += 4 e_i      logit(succ) = 4 * 8 = 32, others 0

so the prompt [t_0] makes the model write t_1, t_2, ... and then whatever the script's last token is
mapped to (EOS, or back to its first token for a loop). Every script token needs one successor, so
scripts must not share a token with a different successor (SCRIPTS is checked). The vocabulary is the
real tokenizer's (49,152), so text, emoji and stop strings go through the real detokenizer.
The same folder with `load_format="dummy"` is a tiny random model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 64
EOS = 2
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)

# name -> (text, what its last token leads to: "eos" or "loop")
SCRIPTS = {
    "emoji": ("Hi 😀 你好,世界!🎉 ok", "eos"),
    "stop": (" The answer is forty-two; Done", "eos"),
    "loop": (" red green blue", "loop"),
}


def write_scripted_model(folder: Path, tokenizer, scripts: dict[str, list[int]], tokenizer_dir: Path) -> Path:
    """Writes the scripted Llama (weights, config, the tokenizer's files) into `folder`."""
    successors: dict[int, int] = {}
    for name, ids in scripts.items():
        end = EOS if SCRIPTS[name][1] == "eos" else ids[0]
        for a, b in zip(ids, ids[1:] + [end], strict=True):
            assert successors.setdefault(a, b) == b, f"script {name!r}: token {a} already leads elsewhere"
    assert len(successors) <= HIDDEN, "more script tokens than hidden dimensions"
    vocab = len(tokenizer)
    save_file(_weights(successors, vocab), str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def _weights(successors: dict[int, int], vocab: int) -> dict[str, torch.Tensor]:
    head_dim = HIDDEN // HEADS
    embed = torch.zeros(vocab, HIDDEN)  # [V, H]
    lm_head = torch.zeros(vocab, HIDDEN)  # [V, H]
    for i, (token, succ) in enumerate(successors.items()):
        embed[token, i] = 1.0
        lm_head[succ, i] += 4.0
    w = {
        "model.embed_tokens.weight": embed,
        "lm_head.weight": lm_head,
        "model.norm.weight": torch.ones(HIDDEN),
    }
    gen = torch.Generator().manual_seed(0)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        shapes = {
            "self_attn.q_proj": (HEADS * head_dim, HIDDEN),
            "self_attn.k_proj": (KV_HEADS * head_dim, HIDDEN),
            "self_attn.v_proj": (KV_HEADS * head_dim, HIDDEN),
            "mlp.gate_proj": (FFN, HIDDEN),
            "mlp.up_proj": (FFN, HIDDEN),
        }
        for name, shape in shapes.items():  # random, so attention and the MLP really run
            w[p + name + ".weight"] = torch.randn(shape, generator=gen) * 0.1
        w[p + "self_attn.o_proj.weight"] = torch.zeros(HIDDEN, HEADS * head_dim)  # adds nothing
        w[p + "mlp.down_proj.weight"] = torch.zeros(HIDDEN, FFN)  # adds nothing
        w[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    return w
