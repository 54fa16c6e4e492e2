"""StructuredOutputsParams: the constraint a request's output must follow (vLLM's name and fields).

Exactly one of json / json_object / regex / choice / grammar / lark is set. The engine compiles it into a
grammar over the model's vocabulary (engine_service/structured/) and masks, before every draw, the tokens
that would leave it. `reasoning_start` / `reasoning_end` make the constraint start after a reasoning
model's thinking: the output is free until the end marker, and constrained from the token after it.

Pure Python (no xgrammar, no torch): the grammar engine's own checks run where it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bounds on what a client may send: a constraint is compiled on a CPU core, so its size is capped.
MAX_SPEC_CHARS = 64 * 1024  # a JSON schema, regex or grammar, and all choices together
MAX_CHOICES = 1024
MAX_MARKER_CHARS = 64

KINDS = ("json", "json_object", "regex", "choice", "grammar", "lark")


@dataclass(frozen=True)
class StructuredOutputsParams:
    json: str | None = None  # a JSON schema, as JSON text
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: tuple[str, ...] | None = None  # exactly one of these strings
    grammar: str | None = None  # an EBNF grammar (GBNF, with a `root` rule)
    lark: str | None = None  # a Lark grammar (with a `start` rule)
    # JSON only: whitespace between JSON tokens is free (off: compact JSON, separators ", " and ": ").
    any_whitespace: bool = False
    # Reasoning models: the constraint holds only after `reasoning_end` (e.g. "</think>") in the output.
    reasoning_start: str | None = None  # e.g. "<think>": reopens the free part when the prompt ends with it
    reasoning_end: str | None = None

    @property
    def kind(self) -> str:
        set_kinds = [k for k in KINDS if self._value(k) not in (None, False)]
        return set_kinds[0] if len(set_kinds) == 1 else ""

    @property
    def spec(self) -> str:
        """The constraint's text: what compiles (choices joined as the grammar they compile to)."""
        value = self._value(self.kind)
        if isinstance(value, tuple):
            return "\x00".join(value)
        return "" if isinstance(value, bool) else value

    @property
    def key(self) -> tuple[str, str, bool]:
        """What a compiled grammar is cached by: equal keys compile to the same grammar."""
        return self.kind, self.spec, self.any_whitespace and self.kind in ("json", "json_object")

    def validate(self, field: str = "structured_outputs") -> None:
        """Raises ValueError naming the field: shape and size only (the grammar engine checks the syntax)."""
        set_kinds = [k for k in KINDS if self._value(k) not in (None, False)]
        if len(set_kinds) != 1:
            given = ", ".join(set_kinds) or "none"
            raise ValueError(f"{field}: set exactly one of {', '.join(KINDS)} (got {given})")
        kind = set_kinds[0]
        if kind == "choice":
            choices = self.choice or ()
            _check(0 < len(choices) <= MAX_CHOICES, f"{field}.choice must hold 1 to {MAX_CHOICES} strings")
            _check(
                all(isinstance(c, str) and c for c in choices),
                f"{field}.choice entries must be non-empty strings",
            )
        elif kind != "json_object":
            value = self._value(kind)
            _check(
                isinstance(value, str) and value.strip() != "", f"{field}.{kind} must be a non-empty string"
            )
        _check(
            len(self.spec) <= MAX_SPEC_CHARS,
            f"{field}.{kind} is too long: at most {MAX_SPEC_CHARS} characters",
        )
        for name in ("reasoning_start", "reasoning_end"):
            marker = getattr(self, name)
            if marker is not None:
                _check(
                    isinstance(marker, str) and 0 < len(marker) <= MAX_MARKER_CHARS,
                    f"{field}.{name} must be a string of 1 to {MAX_MARKER_CHARS} characters",
                )
        _check(
            self.reasoning_start is None or self.reasoning_end is not None,
            f"{field}.reasoning_start needs reasoning_end",
        )

    def _value(self, kind: str):
        return getattr(self, kind) if kind else None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
