"""One JSON value read as it streams: its raw text passed on as it comes, and where it ends.

Used where the output is the arguments themselves (a named tool_choice, Mistral's [ARGS]{...}): the
arguments go to the client as they arrive, and the text after the value is handed back.
"""

from __future__ import annotations


class ValueStream:
    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.done = False

    def feed(self, text: str) -> tuple[str, str]:
        """(the value's text in `text`, the text after the value ends: "" until it does)."""
        if self.done:
            return "", text
        begin = 0 if self.started else len(text) - len(text.lstrip())
        for i, ch in enumerate(text):
            if not self.started:
                if ch.isspace():
                    continue
                self.started = True
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return self._end(text, begin, i + 1)
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return self._end(text, begin, i + 1)
        return text[begin:], ""

    def _end(self, text: str, begin: int, end: int) -> tuple[str, str]:
        self.done = True
        return text[begin:end], text[end:]
