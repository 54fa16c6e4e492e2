"""What tool parsers produce: OpenAI's tool-call deltas, and the ids they carry."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def new_call_id() -> str:
    """OpenAI-style call ids: "call_" and 24 random characters."""
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCallDelta:
    """One piece of one tool call, as streamed in `delta.tool_calls`: the first piece of a call carries its
    id and name, the later ones fragments of its arguments (JSON text)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_json(self) -> dict:
        fn: dict = {"arguments": self.arguments}
        if self.name is not None:
            fn = {"name": self.name, "arguments": self.arguments}
        out: dict = {"index": self.index}
        if self.id is not None:
            out.update(id=self.id, type="function")
        out["function"] = fn
        return out


@dataclass
class ParsedText:
    """What a piece of model output became: plain content, and tool-call pieces."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def extend(self, other: ParsedText) -> ParsedText:
        self.content += other.content
        self.calls += other.calls
        return self


def assemble(deltas: list[ToolCallDelta]) -> list[dict]:
    """Whole tool calls (OpenAI's message.tool_calls) from their deltas, in index order."""
    calls: dict[int, dict] = {}
    for d in deltas:
        call = calls.setdefault(
            d.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if d.id is not None:
            call["id"] = d.id
        if d.name is not None:
            call["function"]["name"] = d.name
        call["function"]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]
