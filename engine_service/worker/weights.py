"""Loading Hugging Face safetensors checkpoints (single file or sharded) into our models.

Checkpoint tensors are read lazily: a parameter's `weight_loader` asks for its tensor-parallel slice with
`narrow`, and only that slice is read from the file. A rank of a TP=8 engine reads an eighth of each
sharded matrix, not the whole checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


def checkpoint_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"{folder} has no *.safetensors weights (use load_format='dummy' for random weights)"
        )
    return files


class CheckpointTensor:
    """A tensor still in its safetensors file. It has what weight loaders use of a tensor: `shape`,
    `narrow(dim, start, length)` (reads only that slice) and `[...]` indexing (`t[:]` reads it whole)."""

    def __init__(self, lazy_slice):
        self._slice = lazy_slice
        self.shape = torch.Size(lazy_slice.get_shape())

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        index = [slice(None)] * len(self.shape)
        index[dim] = slice(start, start + length)
        return self._slice[tuple(index)]

    def __getitem__(self, index) -> torch.Tensor:
        return self._slice[index]


def iterate_weights(folder: str | Path) -> Iterator[tuple[str, CheckpointTensor]]:
    for file in checkpoint_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, CheckpointTensor(f.get_slice(name))


# Checkpoint name fragments that vary between exporters, and ours. KV-cache scales: vLLM's fp8 format and
# compressed-tensors write self_attn.k_scale, ModelOpt self_attn.k_proj.k_scale; ours live on the attention.
_RENAMES = (
    (".weight_scale_inv", ".weight_scale"),  # block-quantized fp8 (DeepSeek, Qwen3-FP8): a multiplier, too
    (".self_attn.k_proj.k_scale", ".self_attn.attn.k_scale"),
    (".self_attn.v_proj.v_scale", ".self_attn.attn.v_scale"),
    (".self_attn.k_scale", ".self_attn.attn.k_scale"),
    (".self_attn.v_scale", ".self_attn.attn.v_scale"),
)
_SKIPPED = ("rotary_emb.inv_freq", ".kv_scale", ".output_scale")  # derived, or unused by this engine


def checkpoint_target(model: nn.Module, name: str) -> tuple[str, object] | None:
    """(our parameter name, shard id or None) of a checkpoint tensor; None for tensors we do not keep.
    A model may rename (`rename_checkpoint(name)`) and map names itself (`checkpoint_target(name)`, None
    when it leaves a name to the default, e.g. mixture-of-experts weights), else its `stacked_params`
    ({checkpoint fragment: (our fragment, shard id)}) fuse q/k/v and gate/up."""
    if any(fragment in name for fragment in _SKIPPED):
        return None
    if getattr(model.args, "tie_word_embeddings", False) and name.startswith("lm_head."):
        return None
    for fragment, ours in _RENAMES:
        if name.endswith(fragment):
            name = name[: -len(fragment)] + ours
    rename = getattr(model, "rename_checkpoint", None)
    if rename is not None:
        name = rename(name)
    own = getattr(model, "checkpoint_target", None)
    if own is not None:
        mapped = own(name)
        if mapped is not None:
            return mapped
    for fragment, (ours, shard_id) in getattr(model, "stacked_params", {}).items():
        if fragment in name:
            return name.replace(fragment, ours), shard_id
    return name, None


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """Copy each checkpoint tensor into its parameter (through the parameter's shard-aware weight_loader)."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in iterate_weights(folder):
        target = checkpoint_target(model, name)
        if target is None:
            continue
        target_name, shard_id = target
        if target_name not in params:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}")
        param = params[target_name]
        loader = getattr(param, "weight_loader", _copy)
        if shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(target_name)
    missing = {n for n, p in params.items() if n not in loaded and not getattr(p, "optional", False)}
    if missing:
        raise ValueError(
            f"checkpoint in {folder} lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}"
        )
    finish_loading(model)


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights for benchmarks: small normal values, norms at one (so activations stay finite).
    FP8 weights are N(0, 1) draws in e4m3 whose scales (`dummy_value`) bring them to the same range."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if hasattr(param, "dummy_value"):
            param.data.fill_(param.dummy_value)
            continue
        if "norm" in name:
            param.data.fill_(1.0)
            continue
        gen = generators.setdefault(param.device, torch.Generator(device=param.device).manual_seed(seed))
        if param.dtype == torch.float8_e4m3fn:
            draws = torch.empty(param.shape, dtype=torch.float32, device=param.device)
            param.data.copy_(draws.normal_(0.0, 1.0, generator=gen).to(param.dtype))
            continue
        param.data.normal_(0.0, 0.02, generator=gen)
    finish_loading(model)


def finish_loading(model: nn.Module) -> None:
    """Let layers turn what was loaded into what they run (e.g. FP8 weights dequantized on the CPU)."""
    for module in model.modules():
        process = getattr(module, "process_weights_after_loading", None)
        if process is not None:
            process()


def _copy(param: nn.Parameter, loaded: torch.Tensor | CheckpointTensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(
            f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded.shape)}"
        )
    param.data.copy_(loaded[...])
