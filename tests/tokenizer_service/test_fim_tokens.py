"""Fill-in-the-middle tokens in Info: found when the vocabulary has a whole family, absent otherwise."""

from __future__ import annotations

from pathlib import Path

from tokenizer_service.tokenizer import ModelTokenizer


def test_fim_tokens_found_only_when_the_vocabulary_has_them(default_model_dir: Path, hf_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    assert ModelTokenizer(hf_tokenizer).fim_tokens() is None  # SmolLM2 has none
    coder = AutoTokenizer.from_pretrained(default_model_dir)
    coder.add_special_tokens({"additional_special_tokens": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]})
    coder.save_pretrained(tmp_path)
    fim = ModelTokenizer(AutoTokenizer.from_pretrained(tmp_path)).fim_tokens()
    assert fim == ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    ids = coder.encode("<fim_prefix>a<fim_suffix>b<fim_middle>")
    assert ids[0] == coder.convert_tokens_to_ids("<fim_prefix>")  # each encodes to its one token
