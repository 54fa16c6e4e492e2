"""How many bytes of input one token can stand for, at most: so that text too long for the model is refused
from its length in bytes, before it is tokenized.

Tokenizing costs memory and time in proportion to the text (Hugging Face tokenizers peak at about 160
bytes of memory per byte of input: 1.6 GB and 23 s for 10 MB of text on one core), and truncation does
not help: `enable_truncation` cuts the ids after the whole text was encoded. A text of B bytes encodes to
at least B / max_bytes_per_token tokens, so when that is more than the model can take, the answer is known
without tokenizing.

The bound is read from the tokenizer's own description (tokenizer.json), and is honest only for tokenizers
in which every token covers a bounded stretch of the input:

    model       BPE, with byte-level pre-tokenization or byte fallback (no unknown token can swallow a run
                of unknown characters); the longest token, as bytes (Llama 2/3, Mistral, Qwen, SmolLM, GPT-2)
    normalizer  none, Prepend and Replace (by a non-empty string) keep or grow the input; Unicode
                normalization can shrink it (NFKC turns a 4-byte letter into 1 byte), so x4; Lowercase x3
    pre-tokens  splitting that keeps every byte (ByteLevel, Metaspace, Split/Punctuation/Digits that keep
                the delimiters); special tokens count their own length

Anything else (WordPiece's [UNK] for a whole word, normalizers that drop characters, pre-tokenizers that
drop whitespace, SentencePiece's precompiled character maps) has no such bound: `None`, and the text is
tokenized and counted instead.
"""

from __future__ import annotations

import json
import math

# How much a normalizer can shrink its input, at most (input bytes per output byte).
_NORMALIZER_SHRINK = {"NFC": 4, "NFD": 4, "NFKC": 4, "NFKD": 4, "Lowercase": 3, "Prepend": 1}
# Pre-tokenizers that keep every byte of the input in some pre-token.
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation"}


def max_bytes_per_token(hf_tokenizer) -> int | None:
    """The most input bytes (UTF-8) one token of this Hugging Face tokenizer can cover, or None."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer: nothing to read the rules from
        return None
    return bound_from_spec(json.loads(backend.to_str()))


def bound_from_spec(spec: dict) -> int | None:
    """The bound from a tokenizer.json's contents (see the module's docstring), or None."""
    shrink = _normalizer_shrink(spec.get("normalizer"))
    if shrink is None or not _keeps_bytes(spec.get("pre_tokenizer")):
        return None
    longest = _longest_token_bytes(spec["model"], spec.get("pre_tokenizer"), spec.get("decoder"))
    if longest is None:
        return None
    added = max((len(t["content"].encode("utf-8")) for t in spec.get("added_tokens") or ()), default=1)
    return max(math.ceil(longest * shrink), added)


def refuses(text: str, max_tokens: int, bytes_per_token: int | None) -> bool:
    """Whether `text` certainly encodes to more than `max_tokens` tokens, judged from its length alone."""
    if bytes_per_token is None:
        return False
    limit = max_tokens * bytes_per_token
    if len(text) > limit:  # at least one byte per character: no need to encode
        return True
    return 4 * len(text) > limit and len(text.encode("utf-8", "surrogatepass")) > limit


def _normalizer_shrink(normalizer: dict | None) -> float | None:
    if normalizer is None:
        return 1.0
    kind = normalizer.get("type")
    if kind == "Sequence":
        shrink = 1.0
        for part in normalizer.get("normalizers", ()):
            factor = _normalizer_shrink(part)
            if factor is None:
                return None
            shrink *= factor
        return shrink
    if kind == "Replace":
        pattern, content = normalizer.get("pattern", {}), normalizer.get("content", "")
        if "String" not in pattern or not content:  # a regex, or a deletion: no bound
            return None
        return max(1.0, len(pattern["String"].encode()) / len(content.encode()))
    return _NORMALIZER_SHRINK.get(kind)


def _keeps_bytes(pre_tokenizer: dict | None) -> bool:
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return all(_keeps_bytes(p) for p in pre_tokenizer.get("pretokenizers", ()))
    if kind in ("Split", "Punctuation") and pre_tokenizer.get("behavior") == "Removed":
        return False
    return kind in _KEEPING_PRE_TOKENIZERS


def _byte_level(part: dict | None) -> bool:
    if part is None:
        return False
    if part.get("type") == "ByteLevel":
        return True
    children = part.get("pretokenizers") or part.get("decoders") or ()
    return any(_byte_level(child) for child in children)


def _longest_token_bytes(model: dict, pre_tokenizer: dict | None, decoder: dict | None) -> int | None:
    if model.get("type") != "BPE":
        return None
    byte_level = _byte_level(pre_tokenizer) or _byte_level(decoder)
    if not byte_level and not model.get("byte_fallback") and model.get("unk_token") and model.get("fuse_unk"):
        return None  # a run of unknown characters, however long, becomes one token
    vocab = model.get("vocab") or {}
    if byte_level:  # each character of a byte-level token stands for one byte
        longest = max((len(token) for token in vocab), default=1)
    else:  # the token's own UTF-8 (▁ for a space, <0x41> for a byte): never fewer bytes than it covers
        longest = max((len(token.encode("utf-8")) for token in vocab), default=1)
    return max(longest, 4)  # an unknown character (one token each, when not fused): up to 4 bytes
