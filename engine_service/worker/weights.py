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


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """Copy each checkpoint tensor into its parameter (through the parameter's shard-aware weight_loader)."""
    params = dict(model.named_parameters())
    stacked: dict[str, tuple[str, object]] = getattr(model, "stacked_params", {})
    tied = getattr(model.args, "tie_word_embeddings", False)
    loaded: set[str] = set()
    for name, tensor in iterate_weights(folder):
        if "rotary_emb.inv_freq" in name or (tied and name.startswith("lm_head.")):
            continue
        for fragment, (ours, shard_id) in stacked.items():
            if fragment in name:
                target = name.replace(fragment, ours)
                param = params[target]
                param.weight_loader(param, tensor, shard_id)
                break
        else:
            target = name
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}")
            param = params[target]
            getattr(param, "weight_loader", _copy)(param, tensor)
        loaded.add(target)
    missing = set(params) - loaded
    if missing:
        raise ValueError(
            f"checkpoint in {folder} lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}"
        )


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights for benchmarks: small normal values, norms at one (so activations stay finite)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data.fill_(1.0)
            continue
        gen = generators.setdefault(param.device, torch.Generator(device=param.device).manual_seed(seed))
        param.data.normal_(0.0, 0.02, generator=gen)


def _copy(param: nn.Parameter, loaded: torch.Tensor | CheckpointTensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(
            f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded.shape)}"
        )
    param.data.copy_(loaded[:])
