"""The model folder's Hugging Face tokenizer, for the engine's own detokenizing."""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(path: str):
    """The model folder's Hugging Face tokenizer, or None when it ships none (e.g. random-weight shapes)."""
    folder = Path(path)
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
