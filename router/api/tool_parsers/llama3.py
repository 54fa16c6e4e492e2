"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: the whole answer is one or more JSON objects
{"name": ..., "parameters": {...}} (separated by ";"), optionally after <|python_tag|>.

The answer is a call when its first non-space character opens a JSON object (or list); otherwise it is
content, all of it.
"""

from __future__ import annotations

from router.api.tool_parsers.base import ToolParser
from router.api.tool_parsers.calls import ParsedText
from router.api.tool_parsers.json_calls import CallScanner

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(ToolParser):
    needs_special_tokens = True

    def __init__(self) -> None:
        self._mode = ""  # "" until the answer's first character: "calls" or "content"
        self._buf = ""
        self._scanner = CallScanner()

    def feed(self, text: str) -> ParsedText:
        if self._mode == "content":
            return ParsedText(content=text)
        if self._mode == "calls":
            return ParsedText(calls=self._scanner.feed(text))
        self._buf += text
        head = self._buf.lstrip()
        if not head or (PYTHON_TAG.startswith(head) and head != PYTHON_TAG):
            return ParsedText()
        head = head.removeprefix(PYTHON_TAG).lstrip()
        if not head:
            return ParsedText()
        if head[0] in "{[":
            self._mode, self._buf = "calls", ""
            return ParsedText(calls=self._scanner.feed(head))
        self._mode, text, self._buf = "content", self._buf, ""
        return ParsedText(content=text)

    def finish(self) -> ParsedText:
        if self._mode == "calls":
            out = ParsedText(calls=self._scanner.finish())
            return out
        text, self._buf = self._buf, ""
        return ParsedText(content=text)
