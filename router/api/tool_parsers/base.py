"""A tool-call parser reads one choice's output as it streams and splits it into content and tool calls.

`feed(text)` takes the next piece of output and returns what can be told apart so far; text that may be
the start of a marker is held until the next piece settles it. `finish()` flushes the rest. Parsers never
see the whole output at once, so a streamed response and the non-streamed one come from the same calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from router.api.tool_parsers.calls import ParsedText


class ToolParser(ABC):
    # Special-token markers (Mistral's [TOOL_CALLS], Llama's <|python_tag|>) must reach the parser: the
    # request asks the engine to keep special tokens in the text (vLLM's parsers adjust it the same way).
    needs_special_tokens = False

    @abstractmethod
    def feed(self, text: str) -> ParsedText: ...

    @abstractmethod
    def finish(self) -> ParsedText: ...


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (text to hold back)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
