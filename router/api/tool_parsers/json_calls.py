"""Tool calls written as JSON objects, read as the text streams in: names first, arguments as they come.

    {"name": "get_weather", "arguments": {"city": "Paris"}}          Hermes / Qwen, Mistral (in a list)
    {"name": "get_weather", "parameters": {"city": "Paris"}}         Llama 3.x
    [{"name": ..., "parameters": {...}}, ...]                        tool_choice "required" (our grammar)

`CallScanner` reads such objects (bare, separated by "," ";" or whitespace, or in a JSON array) a character
at a time, tracking strings, escapes and nesting. In a call object it finds the "name" string and the
arguments value ("arguments" or "parameters"): the name is sent as soon as its string closes, then the
arguments' raw JSON text as it arrives, so a client sees the call before its arguments are complete. An
arguments value written as a JSON string (some models quote it) is sent once whole, decoded. Arguments
before the name are held until the name comes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from router.api.tool_parsers.calls import ToolCallDelta, new_call_id

NAME_KEYS = ("name",)
ARGS_KEYS = ("arguments", "parameters")


class _Call:
    def __init__(self, index: int, depth: int):
        self.index = index
        self.depth = depth  # nesting depth inside the call object's braces
        self.expect = "key"  # key | colon | value | next (after a value: "," or "}")
        self.key: str | None = None
        self.string: list[str] | None = None  # the raw literal of a string at the call's depth, being read
        self.name: str | None = None
        self.named = False  # the name delta was sent
        self.in_args = False
        self.args_kind = ""  # "json" (object/array/literal, streamed raw) or "string" (decoded at the end)
        self.held_args: list[str] = []  # arguments read before the name was sent
        self.has_args = False


class CallScanner:
    def __init__(self, first_index: int = 0, make_id: Callable[[], str] = new_call_id):
        self.next_index = first_index
        self.make_id = make_id
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.call: _Call | None = None
        self.broken = False  # a call object ended without a name (not a tool call after all)
        self.num_calls = 0

    @property
    def inside_call(self) -> bool:
        return self.call is not None

    def feed(self, text: str) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        args: list[str] = []  # this chunk's arguments text of the current call
        for ch in text:
            call = self.call
            if call is not None and call.in_args and call.args_kind == "json":
                args.append(ch)
            if self.in_string:
                self._string_char(ch, call, out, args)
                continue
            if ch == '"':
                self.in_string = True
                if call is not None and self.depth == call.depth and call.expect in ("key", "value"):
                    call.string = []
                    if call.expect == "value" and call.key in ARGS_KEYS and not call.in_args:
                        call.in_args, call.args_kind, call.has_args = True, "string", True
                continue
            if ch in "{[":
                if call is None and ch == "{":
                    self.call = _Call(self.next_index, self.depth + 1)
                    self.next_index += 1
                elif call is not None and self.depth == call.depth and call.expect == "value":
                    if call.key in ARGS_KEYS and not call.in_args:
                        call.in_args, call.args_kind, call.has_args = True, "json", True
                        args.append(ch)
                    call.expect = "next"
                self.depth += 1
                continue
            if ch in "}]":
                self.depth -= 1
                if (
                    call is not None
                    and call.in_args
                    and call.args_kind == "json"
                    and self.depth == call.depth
                ):
                    call.in_args = False
                    self._send_args(call, args, out)
                if call is not None and self.depth == call.depth - 1:  # the call object closed
                    if call.in_args:  # a bare literal value ended by the closing brace
                        args.pop()
                        call.in_args = False
                        self._send_args(call, args, out)
                    self._end(call, out)
                continue
            if call is None or self.depth != call.depth:
                continue
            if ch == ":" and call.expect == "colon":
                call.expect = "value"
            elif ch == "," and call.expect in ("next", "value"):
                if call.in_args:  # a bare literal (number, true...) as arguments
                    args.pop()
                    call.in_args = False
                    self._send_args(call, args, out)
                call.expect, call.key = "key", None
            elif not ch.isspace() and call.expect == "value":
                if call.key in ARGS_KEYS and not call.in_args:
                    call.in_args, call.args_kind, call.has_args = True, "json", True
                    args.append(ch)
                call.expect = "next"
        if self.call is not None and self.call.in_args and args:
            self._send_args(self.call, args, out)
        return out

    def finish(self) -> list[ToolCallDelta]:
        """The output ended: a call still open is sent as it stands (truncated output)."""
        out: list[ToolCallDelta] = []
        if self.call is not None:
            if self.call.name is None:
                self.broken = True
            else:
                self._end(self.call, out)
            self.call = None
        return out

    # ---- internals -------------------------------------------------------------------------------
    def _string_char(self, ch: str, call: _Call | None, out: list[ToolCallDelta], args: list[str]) -> None:
        if call is not None and call.string is not None:
            call.string.append(ch)
        if self.escape:
            self.escape = False
            return
        if ch == "\\":
            self.escape = True
            return
        if ch != '"':
            return
        self.in_string = False
        if call is None or call.string is None:
            return
        literal = '"' + "".join(call.string)  # ends with the closing quote
        call.string = None
        value = json.loads(literal)
        if call.expect == "key":
            call.key, call.expect = value, "colon"
            return
        call.expect = "next"
        if call.key in NAME_KEYS and call.name is None and isinstance(value, str):
            call.name = value
            self._send_name(call, out)
        elif call.in_args and call.args_kind == "string":
            call.in_args = False
            call.held_args.append(value)
            if call.named:
                out.append(ToolCallDelta(call.index, arguments="".join(call.held_args)))
                call.held_args = []

    def _send_name(self, call: _Call, out: list[ToolCallDelta]) -> None:
        call.named = True
        out.append(ToolCallDelta(call.index, id=self.make_id(), name=call.name))
        self.num_calls += 1
        if call.held_args:
            out.append(ToolCallDelta(call.index, arguments="".join(call.held_args)))
            call.held_args = []

    def _send_args(self, call: _Call, args: list[str], out: list[ToolCallDelta]) -> None:
        if not args:
            return
        text = "".join(args)
        args.clear()
        if call.named:
            out.append(ToolCallDelta(call.index, arguments=text))
        else:
            call.held_args.append(text)

    def _end(self, call: _Call, out: list[ToolCallDelta]) -> None:
        self.call = None
        if call.name is None:
            self.broken = True
            return
        if not call.has_args:
            out.append(ToolCallDelta(call.index, arguments="{}"))
        elif call.held_args:
            out.append(ToolCallDelta(call.index, arguments="".join(call.held_args)))
            call.held_args = []
