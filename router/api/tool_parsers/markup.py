"""Tool calls between markers, JSON inside: Hermes / Qwen (<tool_call>...</tool_call>) and Mistral
([TOOL_CALLS] then a JSON list, or the newer [TOOL_CALLS]name[ARGS]{...} form).

Text before the first call is content; whitespace between and after calls is dropped. When a call block
holds no readable call (no "name"), its text goes out as content at the end: nothing was sent as a call.
"""

from __future__ import annotations

from router.api.tool_parsers.base import ToolParser, partial_suffix
from router.api.tool_parsers.calls import ParsedText, ToolCallDelta, new_call_id
from router.api.tool_parsers.json_calls import CallScanner
from router.api.tool_parsers.value_stream import ValueStream


class MarkupParser(ToolParser):
    """Content, then calls from `start` to `end` (None: to the end of the output), repeatedly."""

    def __init__(self, start: str, end: str | None):
        self.start, self.end = start, end
        self._buf = ""
        self._in_calls = False
        self._scanner = CallScanner()
        self._raw_calls = ""  # the text of the call blocks, given back as content if no call was found

    def feed(self, text: str) -> ParsedText:
        self._buf += text
        out = ParsedText()
        while True:
            if not self._in_calls:
                i = self._buf.find(self.start)
                if i < 0:
                    keep = partial_suffix(self._buf, self.start)
                    self._content(out, self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep :]
                    return out
                self._content(out, self._buf[:i])
                self._buf = self._buf[i + len(self.start) :]
                self._in_calls = True
                self._raw_calls += self.start
                continue
            if self.end is None:
                self._calls(out, self._buf)
                self._buf = ""
                return out
            i = self._buf.find(self.end)
            if i < 0:
                keep = partial_suffix(self._buf, self.end)
                self._calls(out, self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return out
            self._calls(out, self._buf[:i])
            out.calls += self._scanner.finish()
            self._raw_calls += self.end
            self._buf = self._buf[i + len(self.end) :]
            self._in_calls = False

    def finish(self) -> ParsedText:
        out = ParsedText()
        if self._in_calls:
            self._calls(out, self._buf)
            out.calls += self._scanner.finish()
        else:
            self._content(out, self._buf)
        self._buf = ""
        if self._raw_calls and self._scanner.num_calls == 0:  # markers, but no call in them
            out.content += self._raw_calls
        return out

    def _content(self, out: ParsedText, text: str) -> None:
        if self._raw_calls and not text.strip():
            return  # the newlines between and after call blocks
        out.content += text

    def _calls(self, out: ParsedText, text: str) -> None:
        self._raw_calls += text
        out.calls += self._scanner.feed(text)


class HermesParser(MarkupParser):
    """Hermes 2 Pro, Qwen 2.5 / 3, and the fallback format the tokenizer service describes to models whose
    template has no tools: <tool_call>{"name": ..., "arguments": {...}}</tool_call>."""

    def __init__(self) -> None:
        super().__init__("<tool_call>", "</tool_call>")


class MistralParser(ToolParser):
    """[TOOL_CALLS] (a special token) then either a JSON list of calls, or name[ARGS]{...} per call."""

    needs_special_tokens = True
    MARKER = "[TOOL_CALLS]"
    ARGS = "[ARGS]"

    def __init__(self) -> None:
        self._mode = "content"  # content | undecided (after the marker) | json | args
        self._buf = ""
        self._scanner = CallScanner()
        self._index = 0
        self._args: ValueStream | None = None
        self._raw_calls = ""

    def feed(self, text: str) -> ParsedText:
        self._buf += text
        out = ParsedText()
        if self._mode == "content":
            i = self._buf.find(self.MARKER)
            if i < 0:
                keep = partial_suffix(self._buf, self.MARKER)
                out.content += self._buf[: len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep :]
                return out
            out.content += self._buf[:i]
            self._buf = self._buf[i + len(self.MARKER) :]
            self._mode = "undecided"
        if self._mode == "undecided":
            head = self._buf.lstrip()
            if not head:
                return out
            self._mode = "json" if head[0] in "[{" else "args"
        if self._mode == "json":
            text, self._buf = self._buf, ""
            self._raw_calls += text
            out.calls += self._scanner.feed(text)
            return out
        return out.extend(self._feed_args())

    def finish(self) -> ParsedText:
        out = ParsedText()
        if self._mode == "content":
            out.content, self._buf = self._buf, ""
        elif self._mode == "json":
            out.calls += self._scanner.finish()
            if self._scanner.num_calls == 0:
                out.content += self.MARKER + self._raw_calls
        elif self._mode == "args":
            out.extend(self._feed_args())
            name = self._buf.strip().removeprefix(self.MARKER).strip()
            if self._args is None and name:  # a name with no [ARGS]: a call without arguments
                out.calls += self._open_call(name)
                out.calls.append(ToolCallDelta(self._index - 1, arguments="{}"))
        self._buf = ""
        return out

    def _feed_args(self) -> ParsedText:
        out = ParsedText()
        while self._buf:
            if self._args is None:
                i = self._buf.find(self.ARGS)
                if i < 0:
                    return out
                name = self._buf[:i].strip().removeprefix(self.MARKER).strip()
                self._buf = self._buf[i + len(self.ARGS) :]
                out.calls += self._open_call(name)
                self._args = ValueStream()
            fragment, rest = self._args.feed(self._buf)
            if fragment:
                out.calls.append(ToolCallDelta(self._index - 1, arguments=fragment))
            if not self._args.done:
                self._buf = ""
                return out
            self._args, self._buf = None, rest
        return out

    def _open_call(self, name: str) -> list[ToolCallDelta]:
        self._index += 1
        return [ToolCallDelta(self._index - 1, id=new_call_id(), name=name)]
