"""The bytes-per-token bound that refuses a prompt before tokenizing it (pagoda/prompt_bound.py): read from
the tokenizer's own description, honest (a text never has fewer tokens than bytes / bound), and None where
no bound holds."""

from __future__ import annotations

import random

import pytest

from pagoda.prompt_bound import bound_from_spec, max_bytes_per_token, refuses


def bpe(vocab: list[str], **model) -> dict:
    return {"type": "BPE", "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [], **model}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"model": bpe(["a", "ĠĠĠĠ"]), "pre_tokenizer": BYTE_LEVEL}, 4),  # a byte-level char is a byte
        ({"model": bpe(["a", "▁hello"], byte_fallback=True)}, 8),  # "▁" is 3 bytes of UTF-8
        ({"model": bpe(["abcdef"]), "pre_tokenizer": BYTE_LEVEL, "normalizer": {"type": "NFKC"}}, 24),
        (
            {
                "model": bpe(["ab"], byte_fallback=True),
                "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]},
                "added_tokens": [{"content": "<|a_very_long_special_token|>"}],
            },
            29,  # the special token is longer than any vocabulary token
        ),
        ({"model": {"type": "WordPiece", "vocab": {"a": 0}}}, None),  # [UNK] swallows a whole word
        ({"model": bpe(["a"], unk_token="<unk>", fuse_unk=True)}, None),  # unknown runs fuse into one
        ({"model": bpe(["a"], byte_fallback=True), "normalizer": {"type": "StripAccents"}}, None),
        ({"model": bpe(["a"], byte_fallback=True), "pre_tokenizer": {"type": "Whitespace"}}, None),
        (
            {
                "model": bpe(["a"], byte_fallback=True),
                "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": ""},
            },
            None,  # a deletion
        ),
    ],
)
def test_bound_from_the_tokenizer_description(spec, expected):
    assert bound_from_spec(spec) == expected


def test_the_bound_is_honest_for_the_default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    bound = max_bytes_per_token(tokenizer)
    assert bound == 81  # SmolLM2's longest token: a newline and 80 spaces
    rng = random.Random(0)
    alphabet = [" ", "=" * 64, "#" * 80, "\n" + " " * 80, "é", "日本", "🙂", "ab", "<|im_start|>", "\x00"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) * bound >= len(text.encode()), (text, len(ids))
        # refuses() never refuses a text that fits.
        assert not refuses(text, len(ids), bound)
    assert refuses("a" * 82, 1, bound) and not refuses("a" * 81, 1, bound)
    assert refuses("日" * 28, 1, bound)  # 84 bytes in 28 characters
