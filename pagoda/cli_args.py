"""Command-line flags generated from a config dataclass's fields, as vLLM builds its CLI from EngineArgs.

A field is declared once, with its help next to it:

    max_num_seqs: int = field(default=512, metadata={"help": "most sequences in one batch"})

and becomes `--max-num-seqs N`, default 512, with that help. The flag follows from the field's type:

    bool                   --x / --no-x
    int, float, str        --x VALUE
    T | None               --x VALUE (default None)
    Literal["a", "b"]      --x {a,b}
    tuple[str, ...]        --x VALUE, repeatable, collected into a tuple (list[str]: into a list)

and the metadata may add:

    "help"     the help text. Required: a flag without one is a TypeError when the parser is built.
    "flag"     the flag's name when it is not the field's (e.g. --prefix-affinity-blocks for affinity_blocks)
    "choices"  allowed values where the type does not list them
    "metavar", "group" (an argument group's title)
    "cli"      False: no flag (nested configs, or fields built from other flags)

A trailing `_s` (seconds) is dropped from a flag's name: `step_timeout_s` is `--step-timeout`.
Values are checked by the config's own __post_init__; the config modules import nothing from here (their
metadata are plain dicts).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
) -> None:
    """Adds a flag per field of `cls` (those in `only`, when given) but those with cli=False; `defaults`
    overrides fields' defaults, `choices` gives the choices a registry knows (a config module cannot import
    it)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields(cls, only):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: give it field(metadata={{'help': ...}})")
        kwargs = _kwargs(f, hints[f.name])
        default = _default(f)
        if f.name in (defaults or {}):
            default = defaults[f.name]
            kwargs["help"] += f" (default here: {default})"
        if f.name in (choices or {}):
            kwargs["choices"] = choices[f.name]
        flag = flag_name(f)
        if "choices" not in kwargs and kwargs.get("action") in (None, "append"):
            kwargs.setdefault("metavar", flag[2:].replace("-", "_").upper())
        if isinstance(default, tuple):
            default = list(default)  # argparse's append copies a list default; a tuple has no append
        title = f.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = parser if title is None else groups[title]
        target.add_argument(flag, dest=f.name, default=default, **kwargs)


def config_values(
    args: argparse.Namespace, cls: type, *, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The parsed values of the fields add_config_args (with the same `only`) made flags of; a repeated
    flag's as its field's type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in flag_fields(cls, only):
        value = getattr(args, f.name)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out


def flag_fields(cls: type, only: tuple[str, ...] | None = None) -> list[dataclasses.Field]:
    """The fields of `cls` that get a flag."""
    wanted = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    return [f for f in wanted if f.metadata.get("cli", True) is not False]


def flag_name(f: dataclasses.Field) -> str:
    name = f.metadata.get("flag") or f.name.removesuffix("_s")
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _kwargs(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"help": f.metadata["help"]}
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:  # T | None
        # (Literal[...] | None is a typing.Union, not a types.UnionType)
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = args
    elif origin in (tuple, list):  # a repeatable flag
        kwargs.update(action="append", type=args[0])
    elif hint in (int, float, str):
        kwargs["type"] = hint
    else:
        raise TypeError(f"{f.name}: no flag for type {hint!r} (set metadata cli=False)")
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    return kwargs
