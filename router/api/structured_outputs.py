"""Structured outputs in the OpenAI API -> the engine's StructuredOutput constraint.

Accepted (one per request):
  response_format  {"type": "json_object"} | {"type": "json_schema", "json_schema": {"name", "schema",
                   "strict", "description"}} | {"type": "text"}        chat and completions (OpenAI)
  structured_outputs {"json": schema | "regex": ... | "choice": [...] | "grammar": EBNF or Lark |
                   "json_object": true}, plus "disable_any_whitespace"  chat and completions (vLLM)
vLLM's older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` (removed from vLLM) are
refused with a 400 that names `structured_outputs`. A grammar is Lark when it has no "::=" (EBNF's rule
sign), as vLLM guesses it. The engine checks the syntax; its INVALID_ARGUMENT comes back as a 400 that
names the request's own field (`client_error`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from router.api.validation import opt_dict, reject_unknown
from router.errors import OpenAIError, bad_request

MAX_SPEC_CHARS = 64 * 1024
MAX_CHOICES = 1024
LEGACY = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend")
FIELDS = frozenset({"response_format", "structured_outputs", *LEGACY})
_SO_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True)
class Constraint:
    """The engine's constraint, and where in the request it came from (for error messages)."""

    pb: engine_pb2.StructuredOutput
    param: str  # e.g. "response_format.json_schema.schema"

    def with_reasoning(self, start: str, end: str) -> Constraint:
        pb = engine_pb2.StructuredOutput()
        pb.CopyFrom(self.pb)
        pb.reasoning_start, pb.reasoning_end = start, end
        return Constraint(pb, self.param)


def parse(body: dict) -> Constraint | None:
    """The request's constraint from response_format or structured_outputs (None: free text)."""
    for name in LEGACY:
        if name in body:
            raise bad_request(
                f"'{name}' is no longer supported: use 'structured_outputs' (as vLLM does), e.g. "
                '{"structured_outputs": {"json": {...}}}, or response_format.',
                name,
            )
    fmt = _response_format(body)
    so = _structured_outputs(body)
    if fmt is not None and so is not None:
        raise bad_request(
            "Give either 'response_format' or 'structured_outputs', not both.", "structured_outputs"
        )
    return fmt or so


def json_schema(schema: object, param: str) -> Constraint:
    """A JSON-schema constraint (also what tool_choice required / named compile to)."""
    if not isinstance(schema, dict | bool):
        raise bad_request(f"'{param}' must be a JSON schema (an object).", param)
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    _check_size(text, param)
    return Constraint(engine_pb2.StructuredOutput(json_schema=text), param)


def client_error(err: OpenAIError, constraint: Constraint | None) -> OpenAIError:
    """The engine's refusal of a constraint, as a 400 naming the request's field."""
    prefix = "structured_output."
    if constraint is None or err.status != 400 or not err.message.startswith(prefix):
        return err
    detail = err.message.split(" ", 1)[1] if " " in err.message else err.message
    return OpenAIError(400, f"'{constraint.param}' {detail}", param=constraint.param.split(".")[0])


def _response_format(body: dict) -> Constraint | None:
    fmt = opt_dict(body, "response_format")
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        reject_unknown(fmt, frozenset({"type"}))
        return None
    if kind == "json_object":
        reject_unknown(fmt, frozenset({"type"}))
        return Constraint(engine_pb2.StructuredOutput(json_object=True), "response_format")
    if kind == "json_schema":
        reject_unknown(fmt, frozenset({"type", "json_schema"}))
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_request(
                "'response_format.json_schema' must be an object with a 'schema'.", "response_format"
            )
        reject_unknown(spec, frozenset({"name", "schema", "strict", "description"}))
        if not isinstance(spec.get("name", ""), str):
            raise bad_request("'response_format.json_schema.name' must be a string.", "response_format")
        schema = spec.get("schema", {"type": "object"})  # OpenAI: no schema, any object
        return json_schema(schema, "response_format.json_schema.schema")
    raise bad_request(
        f"'response_format.type' must be one of 'text', 'json_object', 'json_schema', got {kind!r}.",
        "response_format",
    )


def _structured_outputs(body: dict) -> Constraint | None:
    so = opt_dict(body, "structured_outputs")
    if so is None:
        return None
    reject_unknown(so, frozenset({*_SO_KINDS, "disable_any_whitespace"}))
    kinds = [k for k in _SO_KINDS if so.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise bad_request(
            f"'structured_outputs' must set exactly one of {', '.join(_SO_KINDS)}.", "structured_outputs"
        )
    kind, value = kinds[0], so[kinds[0]]
    param = f"structured_outputs.{kind}"
    any_ws = so.get("disable_any_whitespace") is False  # compact JSON unless whitespace is asked for
    if kind == "json":
        if isinstance(value, str):  # vLLM takes the schema as an object or as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise bad_request(f"'{param}' is not valid JSON: {e}", "structured_outputs") from None
        constraint = json_schema(value, param)
        constraint.pb.any_whitespace = any_ws
        return constraint
    if kind == "json_object":
        if value is not True:
            raise bad_request(f"'{param}' must be true.", "structured_outputs")
        return Constraint(engine_pb2.StructuredOutput(json_object=True, any_whitespace=any_ws), param)
    if kind == "choice":
        if (
            not isinstance(value, list)
            or not 0 < len(value) <= MAX_CHOICES
            or not all(isinstance(c, str) and c for c in value)
        ):
            raise bad_request(
                f"'{param}' must be a list of 1 to {MAX_CHOICES} non-empty strings.", "structured_outputs"
            )
        _check_size("".join(value), param)
        return Constraint(engine_pb2.StructuredOutput(choice=engine_pb2.Choices(values=value)), param)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"'{param}' must be a non-empty string.", "structured_outputs")
    _check_size(value, param)
    if kind == "regex":
        return Constraint(engine_pb2.StructuredOutput(regex=value), param)
    if "::=" in value:
        return Constraint(engine_pb2.StructuredOutput(grammar=value), param)
    return Constraint(engine_pb2.StructuredOutput(lark=value), param)


def _check_size(text: str, param: str) -> None:
    if len(text) > MAX_SPEC_CHARS:
        raise bad_request(f"'{param}' may be at most {MAX_SPEC_CHARS} characters.", param.split(".")[0])
