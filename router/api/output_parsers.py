"""Which tool-call format and reasoning parser this router reads the model's output with.

`--tool-call-parser auto` (the default) asks the tokenizer service for the model's chat template once
and reads its markers (tool_parsers.detect); `--reasoning-parser` (qwen3, deepseek_r1) is off unless set:
a model that does not think would otherwise have its text searched for `<think>`.
"""

from __future__ import annotations

import asyncio

from router.api.reasoning import PARSERS as REASONING_PARSERS
from router.api.reasoning import ReasoningParser, ReasoningSpec
from router.api.tool_parsers import detect
from router.upstream.tokenizer import TokenizerClient


class OutputParsers:
    def __init__(self, tool_call_parser: str, reasoning_parser: str | None, tokenizer: TokenizerClient):
        self._tool_call_parser = tool_call_parser
        self._family: str | None = None if tool_call_parser == "auto" else tool_call_parser
        self._lock = asyncio.Lock()
        self._tokenizer = tokenizer
        self.reasoning: ReasoningSpec | None = (
            REASONING_PARSERS[reasoning_parser] if reasoning_parser else None
        )

    async def tool_family(self) -> str:
        """The model's tool-call format (a tool_parsers.PARSERS name)."""
        if self._family is None:
            async with self._lock:
                if self._family is None:
                    info = await self._tokenizer.info()
                    self._family = detect(info.chat_template)
        return self._family

    def reasoning_parser(self) -> ReasoningParser | None:
        return ReasoningParser(self.reasoning) if self.reasoning is not None else None
