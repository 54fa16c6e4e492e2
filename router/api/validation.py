"""Typed readers for JSON request fields: each returns the value or raises a 400 that names the field.
(The sampling fields are read in sampling.py, with the bounds of their one definition.)

JSON has no int/float/bool distinction that Python keeps for free (`True` is an `int`), so every reader
checks types explicitly; integral floats such as `2.0` are accepted where an integer is expected, as
OpenAI's own server does.
"""

from __future__ import annotations

from typing import Any

from router.errors import bad_request


def _type_error(name: str, expected: str, value: Any) -> Exception:
    return bad_request(f"'{name}' must be {expected}, got {_show(value)}.", param=name)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if lo is not None and value < lo:
        raise bad_request(f"'{name}' must be >= {lo}, got {value}.", param=name)
    if hi is not None and value > hi:
        raise bad_request(f"'{name}' must be <= {hi}, got {value}.", param=name)
    return value


def opt_int(body: dict, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(name)
    return None if value is None else as_int(value, name, lo=lo, hi=hi)


def opt_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def opt_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _type_error(name, "a string", value)
    return value


def opt_dict(body: dict, name: str) -> dict | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise _type_error(name, "an object", value)
    return value


def token_ids(value: Any, name: str) -> list[int]:
    """A non-empty list of non-negative integers (checked against the vocabulary once the model is known)."""
    if not isinstance(value, list) or not value:
        raise _type_error(name, "a non-empty list of token ids", value)
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise bad_request(
                f"'{name}[{i}]' must be a non-negative integer token id, got {_show(t)}.", param=name
            )
    return value


def reject_unknown(body: dict, known: frozenset[str]) -> None:
    for key in body:
        if key not in known:
            raise bad_request(f"Unrecognized request argument supplied: {key}", param=key)
