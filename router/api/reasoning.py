"""Reasoning parsers: a thinking model's output split into its reasoning and its answer, as it streams.

| name          | output                           | thinking begins                                   |
|---------------|----------------------------------|---------------------------------------------------|
| `qwen3`       | `<think>reasoning</think>answer` | with `<think>` in the output (none: all answer)   |
| `deepseek_r1` | `reasoning</think>answer`        | at once (the template opened `<think>`)           |

The reasoning goes to `reasoning_content`, the answer to `content` (its leading whitespace dropped).
Output cut off inside the thinking is all reasoning. The markers are also sent to the engine with a
structured-output request, so that its grammar starts after `</think>` (StructuredOutput.reasoning_end).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.api.tool_parsers.base import partial_suffix

START, END = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningSpec:
    name: str
    starts_inside: bool  # the template opens the thinking: the output starts in it
    start: str = START
    end: str = END


PARSERS = {
    "qwen3": ReasoningSpec("qwen3", starts_inside=False),
    "deepseek_r1": ReasoningSpec("deepseek_r1", starts_inside=True),
}


class ReasoningParser:
    def __init__(self, spec: ReasoningSpec):
        self.spec = spec
        self._mode = "start"  # start (undecided) | reasoning | content
        self._buf = ""
        self._answer_started = False

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) that this piece of output settles."""
        self._buf += text
        reasoning = content = ""
        if self._mode == "start":
            head = self._buf.lstrip()
            start = self.spec.start
            if head.startswith(start):
                self._mode, self._buf = "reasoning", head[len(start) :]
            elif start.startswith(head):
                return "", ""  # may still become the start marker
            else:
                self._mode = "reasoning" if self.spec.starts_inside else "content"
        if self._mode == "reasoning":
            i = self._buf.find(self.spec.end)
            if i < 0:
                keep = partial_suffix(self._buf, self.spec.end)
                reasoning = self._buf[: len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep :]
                return reasoning, ""
            reasoning = self._buf[:i]
            self._buf = self._buf[i + len(self.spec.end) :]
            self._mode = "content"
        content, self._buf = self._answer(self._buf), ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        text, self._buf = self._buf, ""
        if self._mode == "reasoning" or (self._mode == "start" and self.spec.starts_inside):
            return text, ""
        return "", self._answer(text)

    def _answer(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        return text
