"""router/openapi.yaml describes the sampling fields as their one definition does (SamplingParams' spec):
same fields, types, bounds and descriptions, so the document and the router cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from engine_service.core.sampling_params import SAMPLING_FIELDS
from engine_service.core.sampling_spec import SamplingField
from router.api.sampling import SAMPLING_BODY_FIELDS

OPENAPI = yaml.safe_load((Path(__file__).resolve().parents[2] / "router" / "openapi.yaml").read_text())
SCHEMAS = OPENAPI["components"]["schemas"]
TYPES = {"int": "integer", "float": "number", "bool": "boolean", "token_ids": "array", "strings": "array"}


def resolved(schema: dict) -> dict:
    """$ref followed (siblings such as `description` kept), a string-or-list (Stop) as its list form."""
    if "$ref" in schema:
        target = resolved(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if "oneOf" in schema:
        (as_list,) = [s for s in schema["oneOf"] if s.get("type") == "array"]
        schema = {**as_list, **{k: v for k, v in schema.items() if k != "oneOf"}}
    return schema


def described(schema: dict) -> dict:
    """What the document says of a field that the spec also says: type, bounds, item bounds, description."""
    schema = resolved(schema)
    kinds = schema.get("type", "object")
    kinds = [k for k in kinds if k != "null"] if isinstance(kinds, list) else [kinds]
    out = {"type": kinds[0]}
    for key in ("minimum", "exclusiveMinimum", "maximum", "maxItems", "description"):
        if key in schema:
            out[key] = schema[key]
    for key in ("items", "additionalProperties"):
        if key in schema:
            out[key] = described(schema[key])
            out[key].pop("description", None)
    return out


def expected(f: SamplingField, description: bool = True) -> dict:
    b = f.bounds
    bounds = {}
    if b.lo is not None:
        bounds["exclusiveMinimum" if b.lo_open else "minimum"] = b.lo
    if b.hi is not None:
        bounds["maximum"] = b.hi
    if f.kind == "logit_bias":
        out = {"type": "object", "additionalProperties": {"type": "number", **bounds}}
    elif f.kind == "token_ids":
        out = {"type": "array", "items": {"type": "integer", **bounds}}
    elif f.kind == "strings":
        out = {"type": "array", "maxItems": b.max_items, "items": {"type": "string"}}
    else:
        out = {"type": TYPES[f.kind], **bounds}
    return {**out, "description": f.help} if description else out


def test_the_sampling_block_is_the_spec():
    properties = SCHEMAS["Sampling"]["properties"]
    got = {name: described(properties[name]) for name in SAMPLING_BODY_FIELDS}
    want = {name: expected(SAMPLING_FIELDS[name]) for name in SAMPLING_BODY_FIELDS}
    for name in want:
        assert got[name] == want[name], (
            f"router/openapi.yaml, Sampling.{name}: {json.dumps(got[name])}\n"
            f"but SamplingParams' spec says: {json.dumps(want[name])}"
        )
    spec_names = {n for n in properties if n in SAMPLING_FIELDS}
    assert spec_names == set(SAMPLING_BODY_FIELDS)


def test_the_per_endpoint_spellings_share_the_bounds():
    chat = SCHEMAS["ChatCompletionRequest"]["allOf"][1]["properties"]
    completion = SCHEMAS["CompletionRequest"]["allOf"][1]["properties"]
    max_tokens, logprobs = (
        expected(SAMPLING_FIELDS[n], description=False) for n in ("max_tokens", "logprobs")
    )
    assert described(chat["max_completion_tokens"]) == max_tokens
    assert {k: v for k, v in described(chat["top_logprobs"]).items() if k != "description"} == logprobs
    assert {k: v for k, v in described(completion["logprobs"]).items() if k != "description"} == logprobs
