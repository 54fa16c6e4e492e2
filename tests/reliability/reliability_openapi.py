"""router/openapi.yaml as test material: hypothesis strategies for request bodies that fit it (and
mutations that do not), and validators for the router's answers.

The strategies cover the JSON Schema the document uses: $ref, allOf, oneOf, enum, const, type (one or
several), object properties with required and optional keys, propertyNames patterns, arrays, strings,
numbers with inclusive or exclusive bounds. Generated lists and free-form objects stay small, and `CAPS`
keeps the counts that drive generation low, so that a valid case costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from hypothesis import strategies as st

OPENAPI = yaml.safe_load((Path(__file__).resolve().parents[2] / "router" / "openapi.yaml").read_text())
SCHEMAS = OPENAPI["components"]["schemas"]

# Property -> the largest value generated (the schema's own bound may be far larger): n samples and
# output tokens are the only fields whose size the backend pays for.
CAPS = {"n": 3, "max_tokens": 24, "max_completion_tokens": 24, "min_tokens": 24}
# Schemas generated from fixed choices: the served model names (any other name is a 404).
FIXED: dict[str, st.SearchStrategy] = {}

_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
JSON = st.recursive(
    _SCALARS | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def strategy(schema: dict, name: str | None = None) -> st.SearchStrategy:
    """Values that fit `schema`; `name` is the property it describes (for CAPS)."""
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[1]
        return FIXED[ref] if ref in FIXED else strategy(SCHEMAS[ref], name)
    if "allOf" in schema:
        return _merged([_resolve(s) for s in schema["allOf"]])
    if "oneOf" in schema:
        return st.one_of([strategy(s, name) for s in schema["oneOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return st.one_of([strategy({**schema, "type": k}, name) for k in kinds])
    if kinds == "null":
        return st.none()
    if kinds == "boolean":
        return st.booleans()
    if kinds == "integer":
        hi = schema.get("maximum", 2**64)
        return st.integers(schema.get("minimum", -(2**64)), min(hi, CAPS.get(name, hi)))
    if kinds == "number":
        lo, hi = schema.get("minimum", schema.get("exclusiveMinimum", -1e9)), schema.get("maximum", 1e9)
        return st.floats(lo, hi, exclude_min="exclusiveMinimum" in schema, allow_nan=False)
    if kinds == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 24), 24))
    if kinds == "array":
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", lo + 3), lo + 3)
        return st.lists(strategy(schema.get("items", {}), name), min_size=lo, max_size=hi)
    if kinds == "object" or "properties" in schema:
        return _object(schema)
    return JSON


def _resolve(schema: dict) -> dict:
    return _resolve(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]) if "$ref" in schema else schema


def _merged(parts: list[dict]) -> st.SearchStrategy:
    merged = {"type": "object", "properties": {}, "required": []}
    for part in parts:
        merged["properties"].update(part.get("properties", {}))
        merged["required"] += part.get("required", [])
    return _object(merged)


def _object(schema: dict) -> st.SearchStrategy:
    props = schema.get("properties")
    if props:
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: strategy(v, k) for k, v in props.items() if k in required},
            optional={k: strategy(v, k) for k, v in props.items() if k not in required},
        )
    values = schema.get("additionalProperties")
    if isinstance(values, dict):
        keys = strategy({"type": "string", **schema.get("propertyNames", {})})
        return st.dictionaries(keys, strategy(values), max_size=3)
    return st.dictionaries(st.text(max_size=6), JSON, max_size=3)


def mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies that (mostly) break the schema: a field set to any JSON value, a field dropped, an unknown
    field, or not an object at all."""

    @st.composite
    def mutate(draw) -> object:
        body = dict(draw(valid))
        how = draw(st.sampled_from(["replace", "drop", "unknown", "not-an-object"]))
        if how == "not-an-object":
            return draw(JSON.filter(lambda v: not isinstance(v, dict)))
        if how == "unknown":
            body[draw(st.text(min_size=1, max_size=12))] = draw(JSON)
        elif body:
            key = draw(st.sampled_from(sorted(body)))
            if how == "drop":
                del body[key]
            else:
                body[key] = draw(JSON)
        return body

    return mutate()


def request_schema(path: str) -> dict:
    return OPENAPI["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def response_validator(path: str, content_type: str) -> jsonschema.Draft202012Validator:
    """Validates one 200 answer of `path` (for text/event-stream: one event's JSON)."""
    method = "post" if "post" in OPENAPI["paths"][path] else "get"
    schema = OPENAPI["paths"][path][method]["responses"]["200"]["content"][content_type]["schema"]
    return _validator(schema)


def error_validator() -> jsonschema.Draft202012Validator:
    return _validator({"$ref": "#/components/schemas/Error"})


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    # Component refs become local $defs, so the schema validates on its own.
    text = json.dumps(schema).replace("#/components/schemas/", "#/$defs/")
    defs = json.loads(json.dumps(SCHEMAS).replace("#/components/schemas/", "#/$defs/"))
    return jsonschema.Draft202012Validator({**json.loads(text), "$defs": defs})
