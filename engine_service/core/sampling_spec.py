"""How a sampling field is described once, and checked the same way in every layer.

`SamplingParams` (sampling_params.py) declares each field with `spec(...)` metadata: its bounds and help.
From that one declaration:
  - the engine's `SamplingParams.validate()` checks a request, offline and over gRPC;
  - `SamplingParams.from_pb` gives unset proto fields the declared defaults (server/convert.py);
  - the router reads an OpenAI body with the same bounds straight into the proto message
    (router/api/sampling.py), and its 400s quote the value the client sent;
  - tests hold `engine.proto` and `router/openapi.yaml` to it.
Errors are `SamplingError`s naming the field: a 400 in the router, INVALID_ARGUMENT in the engine.

Pure Python, no torch: the router imports it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1
INT32_MAX = (1 << 31) - 1

# Temperatures below this are greedy (argmax): 1/T would blow the scores up to inf. vLLM draws the line here.
GREEDY_TEMPERATURE = 1e-5

# The sampler keys its noise with 63 bits; a request's seed is any signed 64-bit integer (OpenAI's range).
_SEED_MASK = (1 << 63) - 1


def sampler_seed(seed: int, index: int) -> int:
    """The noise key of sample `index` of a request seeded `seed`: (seed + index) mod 2^63, the same offline,
    over gRPC and through the router. Seeds s and s + 2^63 (e.g. -1 and 2^63 - 1) draw the same stream."""
    return (seed + index) & _SEED_MASK


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_TEMPERATURE


class SamplingError(ValueError):
    """A sampling field out of its type or bounds; `param` names it (as the client spelled it)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Bounds:
    """The metadata `spec()` attaches to a SamplingParams field."""

    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is out of range (top_p > 0)
    max_items: int | None = None  # for lists
    openai: bool = True  # one of OpenAI's own fields; False: an extension vLLM-style servers accept


def spec(
    help: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    max_items: int | None = None,
    openai: bool = True,
) -> dict[str, Bounds]:
    """`field(default=..., metadata=spec(...))`: a sampling field's bounds and help (the help under "help"
    as well, where flags made from fields look for it: pagoda/cli_args.py)."""
    return {"sampling": Bounds(help, lo, hi, lo_open, max_items, openai), "help": help}


@dataclass(frozen=True)
class SamplingField:
    """One field of SamplingParams as every layer sees it. `kind` is the value's shape: int, float, bool,
    strings (stop), token_ids (stop_token_ids) or logit_bias (token id -> float)."""

    name: str
    kind: str
    default: Any  # what an unset field means (None: see the help)
    nullable: bool  # None is a value of its own (max_tokens: fit the context; seed: random; logprobs: none)
    bounds: Bounds

    @property
    def help(self) -> str:
        return self.bounds.help

    def check(self, value: Any, param: str | None = None) -> Any:
        """`value` if it has the field's type and bounds, else a SamplingError naming `param` (default: the
        field's own name)."""
        param = param or self.name
        if value is None and self.nullable:
            return value
        check = _CHECKS[self.kind]
        check(self.bounds, param, value)
        return value


def sampling_fields(cls: type) -> dict[str, SamplingField]:
    """The `spec()`-annotated fields of a dataclass, by name, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "sampling" not in f.metadata:
            continue
        kind, nullable = _kind(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = SamplingField(f.name, kind, default, nullable, f.metadata["sampling"])
    return out


def check_min_tokens(min_tokens: int, max_tokens: int | None) -> None:
    if max_tokens is not None and min_tokens > max_tokens:
        raise SamplingError(
            "min_tokens", f"'min_tokens' ({min_tokens}) must not exceed max_tokens ({max_tokens})."
        )


def check_vocab(param: str, token_ids, vocab_size: int) -> None:
    """Token ids a field names (logit_bias, stop_token_ids) must be in the model's vocabulary."""
    for t in token_ids:
        if t >= vocab_size:
            raise SamplingError(
                param, f"'{param}' holds token id {t}, outside the vocabulary [0, {vocab_size})."
            )


def type_error(param: str, expected: str, value: Any) -> SamplingError:
    text = repr(value)
    shown = text if len(text) <= 60 else text[:57] + "..."
    return SamplingError(param, f"'{param}' must be {expected}, got {shown}.")


def check_range(b: Bounds, param: str, value: float) -> None:
    """The bounds check and its message, which quotes the value as given: "'top_p' must be > 0, got 0."."""
    if b.lo is not None and (value <= b.lo if b.lo_open else value < b.lo):
        op = ">" if b.lo_open else ">="
        raise SamplingError(param, f"'{param}' must be {op} {_num(b.lo)}, got {_num(value)}.")
    if b.hi is not None and value > b.hi:
        raise SamplingError(param, f"'{param}' must be <= {_num(b.hi)}, got {_num(value)}.")


def _num(x: float) -> str:
    """A number as the client wrote it: integers in full (seeds have 19 digits), 2.0 as 2, 2.000001 as is."""
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) < 1e16 else repr(x)
    return str(x)


def proto_value(msg: Any, field: SamplingField) -> Any:
    """A field of a `pagoda.engine.v1.SamplingParams` message as SamplingParams holds it: unset optional
    fields take the declared default. Duck-typed, so that this module needs no protobuf."""
    value = getattr(msg, field.name)
    if field.kind == "logit_bias":
        return dict(value)
    if field.kind in ("strings", "token_ids"):
        return list(value)
    if msg.DESCRIPTOR.fields_by_name[field.name].has_presence and not msg.HasField(field.name):
        return field.default
    return value


# ---- one check per kind ---------------------------------------------------------------------------------


def _int(b: Bounds, param: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(param, "an integer", value)
    check_range(b, param, value)


def _float(b: Bounds, param: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise type_error(param, "a number", value)
    check_range(b, param, value)


def _bool(b: Bounds, param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise type_error(param, "a boolean", value)


def _strings(b: Bounds, param: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise type_error(param, "a string or a list of strings", value)
    if b.max_items is not None and len(value) > b.max_items:
        raise SamplingError(param, f"'{param}' may hold at most {b.max_items} strings, got {len(value)}.")
    if not all(value):
        raise SamplingError(param, f"'{param}' must not contain empty strings.")


def _token_ids(b: Bounds, param: str, value: Any) -> None:
    if not isinstance(value, list):
        raise type_error(param, "a list of token ids", value)
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int):
            raise type_error(param, "a list of token ids", value)
        check_range(b, param, t)


def _logit_bias(b: Bounds, param: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise type_error(param, "an object mapping token ids to biases", value)
    for token, bias in value.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise SamplingError(param, f"'{param}' keys must be non-negative token ids, got {token!r}.")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not math.isfinite(bias):
            raise type_error(param, "an object mapping token ids to numbers", value)
        check_range(b, param, bias)


_CHECKS = {
    "int": _int,
    "float": _float,
    "bool": _bool,
    "strings": _strings,
    "token_ids": _token_ids,
    "logit_bias": _logit_bias,
}


def _kind(hint: Any) -> tuple[str, bool]:
    """(kind, nullable) from a field's type: int, int | None, float, bool, list[str], list[int],
    dict[int, float]."""
    args = typing.get_args(hint)
    nullable = isinstance(hint, types.UnionType) and type(None) in args
    if nullable:
        (hint,) = [a for a in args if a is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return ("strings" if args == (str,) else "token_ids"), nullable
    if origin is dict:
        return "logit_bias", nullable
    return {int: "int", float: "float", bool: "bool"}[hint], nullable
