"""One chat choice's output, split as it streams: reasoning, content and tool calls.

    engine text ─▶ reasoning parser (optional) ─▶ reasoning_content
                                               └▶ answer ─▶ tool parser (optional) ─▶ content, tool_calls

Streaming sends what each piece settles (text that may begin a marker waits for the next piece);
the non-streamed response is the same pieces put together, so both carry the same calls and text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.api.reasoning import ReasoningParser
from router.api.tool_parsers.base import ToolParser
from router.api.tool_parsers.calls import ToolCallDelta, assemble


@dataclass
class Piece:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


class ChoiceOutput:
    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None):
        self._reasoning = reasoning
        self._tools = tools
        self.has_reasoning = reasoning is not None
        # Special-token markers must reach the parser (the engine keeps them in the text).
        self.needs_special_tokens = tools is not None and tools.needs_special_tokens
        # Everything sent so far, for the non-streamed message.
        self.reasoning_text: list[str] = []
        self.content_text: list[str] = []
        self.calls: list[ToolCallDelta] = []

    def feed(self, text: str) -> Piece:
        reasoning, answer = self._reasoning.feed(text) if self._reasoning else ("", text)
        return self._answer(reasoning, answer, last=False)

    def finish(self) -> Piece:
        reasoning, answer = self._reasoning.finish() if self._reasoning else ("", "")
        return self._answer(reasoning, answer, last=True)

    def message(self) -> dict:
        """The non-streamed assistant message."""
        content = "".join(self.content_text)
        message: dict = {"role": "assistant", "content": content if content or not self.calls else None}
        if self.has_reasoning:
            message["reasoning_content"] = "".join(self.reasoning_text) or None
        if self.calls:
            message["tool_calls"] = assemble(self.calls)
        return message

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """OpenAI's "tool_calls" for an answer that ended by calling tools."""
        return "tool_calls" if self.calls and engine_reason == "stop" else engine_reason

    def _answer(self, reasoning: str, answer: str, last: bool) -> Piece:
        piece = Piece(reasoning=reasoning)
        if self._tools is None:
            piece.content = answer
        else:
            parsed = self._tools.feed(answer) if answer else None
            if parsed is not None:
                piece.content, piece.calls = parsed.content, parsed.calls
            if last:
                tail = self._tools.finish()
                piece.content += tail.content
                piece.calls += tail.calls
        if piece.reasoning:
            self.reasoning_text.append(piece.reasoning)
        if piece.content:
            self.content_text.append(piece.content)
        self.calls += piece.calls
        return piece
