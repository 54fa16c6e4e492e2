"""FP8 checkpoints in each published layout load, and their logits match the dequantized model's.

The test writes real e4m3 weights and float32 scales the way each exporter lays them out, next to a
transformers model holding the dequantized weights (the reference). On the CPU the engine dequantizes once
loaded, so the greedy tokens and logprobs must agree as closely as two float32 models do.

    fp8 (vLLM)             weight_scale [] per linear (+ input_scale [] when static); or weight_block_size
                           [128, 128] with weight_scale_inv [ceil(N/128), ceil(K/128)]
    compressed-tensors     weight_scale [N, 1] (channel), [1] (tensor) or blocks; input_scale [1] if static
    modelopt               hf_quant_config.json; weight_scale [], input_scale [], k/v_proj.k/v_scale
    --quantization fp8     a float32 checkpoint quantized on load, one scale per output row
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_parity_hf import check, prompts_of

from engine_service import LLM
from engine_service.layers.quantization.fp8 import quantize_rows

FP8, FP8_MAX = torch.float8_e4m3fn, 448.0
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# q, k, v, gate, up each a multiple of 128 rows, so 128 x 128 blocks never straddle two of them.
CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=256,
    max_position_embeddings=256,
    eos_token_id=2,
    bos_token_id=1,
    tie_word_embeddings=False,
)


def per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().max() / FP8_MAX
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reshape(())


def per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, scale = quantize_rows(w)
    return q, scale[:, None]


def per_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    nb, kb = math.ceil(n / block), math.ceil(k / block)
    padded = torch.nn.functional.pad(w, (0, kb * block - k, 0, nb * block - n))
    tiles = padded.view(nb, block, kb, block)
    scale = (tiles.abs().amax(dim=(1, 3)) / FP8_MAX).clamp_min(1e-12)  # [nb, kb]
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(nb * block, kb * block)
    return q[:n, :k], scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: int | None = None) -> torch.Tensor:
    if block is None:
        return q.float() * (scale.reshape(-1, 1) if scale.numel() > 1 else scale)
    full = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * full


# layout -> (quantize, scale name, scale shape fix, extra tensors per linear, quantization_config, block)
LAYOUTS = {
    "fp8-tensor-dynamic": (
        per_tensor,
        "weight_scale",
        None,
        {},
        {"quant_method": "fp8", "activation_scheme": "dynamic"},
    ),
    "fp8-tensor-static": (
        per_tensor,
        "weight_scale",
        None,
        {"input_scale": torch.tensor(0.02)},
        {"quant_method": "fp8", "activation_scheme": "static"},
    ),
    "fp8-block": (
        per_block,
        "weight_scale_inv",
        None,
        {},
        {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    ),
    "compressed-tensors-channel": (
        per_channel,
        "weight_scale",
        None,
        {},
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False},
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "token",
                        "dynamic": True,
                    },
                }
            },
            "ignore": ["lm_head"],
        },
    ),
    "compressed-tensors-tensor-static": (
        per_tensor,
        "weight_scale",
        (1,),
        {"input_scale": torch.tensor([0.03])},
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False},
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "tensor",
                        "dynamic": False,
                    },
                }
            },
            "ignore": ["lm_head"],
        },
    ),
    "compressed-tensors-block": (
        per_block,
        "weight_scale",
        None,
        {},
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "block",
                        "block_structure": [128, 128],
                        "dynamic": False,
                    },
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "group",
                        "group_size": 128,
                        "dynamic": True,
                    },
                }
            },
            "ignore": ["lm_head"],
        },
    ),
    "modelopt": (per_tensor, "weight_scale", None, {"input_scale": torch.tensor(0.05)}, None),
}


# A mixture of experts shaped like CONFIG: a sparse layer (8 experts, top 2) and a dense one. Its experts'
# gate/up/down are FP8 in the checkpoint, the router (mlp.gate) is not, as in Qwen3-30B-A3B-FP8.
MOE_CONFIG = dict(
    CONFIG,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=96,  # not a multiple of 128: the last block of each expert matrix is partial
    norm_topk_prob=True,
    mlp_only_layers=[1],
)


def write_fp8_checkpoint(
    folder: Path, layout: str, seed: int = 0, moe: bool = False
) -> transformers.PreTrainedModel:
    """The checkpoint in `folder`, and the transformers model with its dequantized weights (a Llama, or a
    Qwen3-MoE with `moe`)."""
    quantize, _, _, _, quant_config = LAYOUTS[layout]
    block = 128 if quantize is per_block else None
    torch.manual_seed(seed)
    if moe:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**MOE_CONFIG)).eval()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    tensors = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2)
                tensors[name] = param.detach().clone()
                continue
            param.normal_(0.0, 0.1)
            if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
                _write_experts(tensors, name, param, layout, block)
                continue
            module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
            if module not in LINEARS:
                tensors[name] = param.detach().clone()
                continue
            _write_linear(tensors, name[: -len(".weight")], param, layout, block)
            if layout == "modelopt" and module in ("k_proj", "v_proj"):
                tensors[f"{name[: -len('.weight')]}.{module[0]}_scale"] = torch.tensor(1.0)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    if quant_config is not None:
        config["quantization_config"] = quant_config
    else:
        quantization = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}
        (folder / "hf_quant_config.json").write_text(json.dumps({"quantization": quantization}))
    (folder / "config.json").write_text(json.dumps(config))
    return model


def _write_linear(tensors: dict, prefix: str, weight: torch.Tensor, layout: str, block: int | None) -> None:
    """`prefix`.weight in FP8 with its scale (and the layout's extra tensors); `weight` (a parameter, or a
    view into one) becomes the dequantized values the reference runs."""
    quantize, scale_name, scale_shape, extra, _ = LAYOUTS[layout]
    q, scale = quantize(weight.detach())
    weight.copy_(dequantize(q, scale, block))
    tensors[f"{prefix}.weight"] = q.contiguous()
    tensors[f"{prefix}.{scale_name}"] = scale.reshape(scale_shape) if scale_shape else scale
    for key, value in extra.items():
        tensors[f"{prefix}.{key}"] = value.clone()


def _write_experts(tensors: dict, name: str, param: torch.Tensor, layout: str, block: int | None) -> None:
    """transformers 5 keeps the experts stacked (gate_up_proj [E, 2I, H], down_proj [E, H, I]); published
    checkpoints hold one tensor per expert matrix (experts.{e}.gate_proj.weight ...), as written here."""
    prefix = name.rsplit(".", 1)[0]
    for e in range(param.shape[0]):
        if name.endswith("down_proj"):
            _write_linear(tensors, f"{prefix}.{e}.down_proj", param[e], layout, block)
            continue
        inter = param.shape[1] // 2
        _write_linear(tensors, f"{prefix}.{e}.gate_proj", param[e, :inter], layout, block)
        _write_linear(tensors, f"{prefix}.{e}.up_proj", param[e, inter:], layout, block)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fp8_checkpoint_matches_its_dequantized_model(tmp_path, layout):
    reference = write_fp8_checkpoint(tmp_path, layout)
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=64)
    check(llm, reference, prompts_of([3, 17, 30], seed=2))


@pytest.mark.parametrize("layout", ["fp8-block", "compressed-tensors-channel", "fp8-tensor-static"])
def test_fp8_mixture_of_experts_checkpoint_matches_its_dequantized_model(tmp_path, layout):
    """Expert matrices in FP8 (each with its own scales) load into the stacked experts, dequantized."""
    reference = write_fp8_checkpoint(tmp_path, layout, moe=True)
    names = load_file(str(tmp_path / "model.safetensors")).keys()
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in names
    assert "model.layers.0.mlp.gate.weight" in names  # the router stays 16/32-bit
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=64)
    check(llm, reference, prompts_of([3, 17, 30], seed=2))


def test_fp8_expert_weight_without_its_scale_is_a_clear_error(tmp_path):
    write_fp8_checkpoint(tmp_path, "fp8-block", moe=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.0.mlp.experts.3.up_proj.weight_scale_inv"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks the weight_scale of expert 3 w3"):
        LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=64)


def test_quantization_fp8_quantizes_a_float_checkpoint_on_load(tmp_path, tiny_models):
    folder, model = tiny_models["qwen2"]
    reference = type(model)(model.config).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith(".weight") and name.rsplit(".", 2)[-2] in LINEARS:
                q, scale = quantize_rows(param.detach())
                param.copy_(q.float() * scale[:, None])
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64, quantization="fp8")
    check(llm, reference, prompts_of([4, 21], seed=3))


def test_modelopt_kv_scales_land_on_the_attention(tmp_path):
    write_fp8_checkpoint(tmp_path, "modelopt")
    scales = {}
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for name in [n for n in tensors if n.endswith(".k_scale")]:
        tensors[name] = torch.tensor(0.5)
        scales[name] = 0.5
    save_file(tensors, str(tmp_path / "model.safetensors"))
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=64, kv_cache_dtype="fp8")
    attn = llm.engine.runner.model.model.layers[0].self_attn.attn
    assert scales and attn.fp8_scales == (0.5, 1.0)
