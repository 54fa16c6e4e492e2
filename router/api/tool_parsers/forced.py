"""The outputs of a forced tool_choice, which the router's own grammar shaped (see router/api/tools.py):

    named     {"type": "function", "function": {"name": "f"}}  -> the output is f's arguments object
    required                                                   -> [{"name": ..., "parameters": {...}}, ...]

These do not depend on the model's own tool-call format, as in vLLM.
"""

from __future__ import annotations

from router.api.tool_parsers.base import ToolParser
from router.api.tool_parsers.calls import ParsedText, ToolCallDelta, new_call_id
from router.api.tool_parsers.json_calls import CallScanner


class NamedCallParser(ToolParser):
    def __init__(self, name: str):
        self.name = name
        self._opened = False

    def feed(self, text: str) -> ParsedText:
        out = ParsedText()
        if not self._opened and text.strip():
            self._opened = True
            out.calls.append(ToolCallDelta(0, id=new_call_id(), name=self.name))
            text = text.lstrip()
        if self._opened and text:
            out.calls.append(ToolCallDelta(0, arguments=text))
        return out

    def finish(self) -> ParsedText:
        if self._opened:
            return ParsedText()
        self._opened = True  # an empty output: still the forced call, with no arguments
        return ParsedText(calls=[ToolCallDelta(0, id=new_call_id(), name=self.name, arguments="{}")])


class RequiredCallsParser(ToolParser):
    def __init__(self) -> None:
        self._scanner = CallScanner()

    def feed(self, text: str) -> ParsedText:
        return ParsedText(calls=self._scanner.feed(text))

    def finish(self) -> ParsedText:
        return ParsedText(calls=self._scanner.finish())
