"""The grammar engine, xgrammar: a constraint -> Grammar (syntax, no vocabulary) -> CompiledGrammar.

xgrammar is vLLM's and SGLang's default engine: JSON schema, regex, EBNF and Lark, a compiled grammar's
token masks mostly precomputed (a step's mask is a few microseconds a row), rollback and a multi-threaded
batch fill. Its errors come as RuntimeErrors with a C++ source location in front; `parse` turns them
into ValueErrors that name the request field.
"""

from __future__ import annotations

import json
import re

import xgrammar as xgr

from engine_service.core.structured_outputs import StructuredOutputsParams

FIELD = "structured_outputs"
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def parse(params: StructuredOutputsParams, field: str = FIELD) -> xgr.Grammar:
    """The constraint as a Grammar; raises ValueError naming `field` when it is not valid."""
    params.validate(field)
    kind = params.kind
    try:
        return _parse(params)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"{field}.{kind} is not valid: {_message(e)}") from None


def _parse(p: StructuredOutputsParams) -> xgr.Grammar:
    if p.kind == "json":
        json.loads(p.json)  # a clearer message for text that is not JSON at all
        return _json_strings_without_controls(
            xgr.Grammar.from_json_schema(p.json, any_whitespace=p.any_whitespace)
        )
    if p.kind == "json_object":
        # Any object: not strict, so properties the (empty) schema does not name are allowed.
        return _json_strings_without_controls(
            xgr.Grammar.from_json_schema(
                '{"type": "object"}', any_whitespace=p.any_whitespace, strict_mode=False
            )
        )
    if p.kind == "regex":
        return xgr.Grammar.from_regex(p.regex)
    if p.kind == "choice":
        # json.dumps writes each choice as a string literal that xgrammar's EBNF reads back (same escapes).
        return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in p.choice))
    if p.kind == "grammar":
        return xgr.Grammar.from_ebnf(p.grammar)
    return xgr.Grammar.from_lark(p.lark)


# xgrammar 0.2.8 writes the characters of a length-bounded JSON string (minLength / maxLength) as
# [^"\\\r\n], which lets control characters U+0001..U+001F through: JSON forbids them unescaped, and a
# parser (Python's json, jsonschema, pydantic) rejects the output. Its unbounded strings use
# [^\0-\x1f"\\\r\n]: the grammar's EBNF is rewritten with that class and read back (the masks of the
# benchmark's schema fill as fast either way: 147 against 153 us a row, median over its string fields).
_LAX_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\r\n]"


def _json_strings_without_controls(g: xgr.Grammar) -> xgr.Grammar:
    text = str(g)
    if _LAX_STRING_CHAR not in text:
        return g
    return xgr.Grammar.from_ebnf(text.replace(_LAX_STRING_CHAR, _JSON_STRING_CHAR))


def _message(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON: {error}"
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()] or ["unknown error"]
    return _LOCATION.sub("", lines[0]) + ("".join(f"; {line.strip()}" for line in lines[1:3]))


def tokenizer_info(hf_tokenizer, vocab_size: int, stop_token_ids: tuple[int, ...]) -> xgr.TokenizerInfo:
    """The vocabulary as xgrammar sees it. `vocab_size` is the model's (its logits' width), which may exceed
    the tokenizer's: the ids past the tokenizer's are never allowed. The stop ids end a complete output."""
    return xgr.TokenizerInfo.from_huggingface(
        hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
    )
