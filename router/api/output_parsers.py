"""Which tool-call format and reasoning parser this router reads a model's output with.

`--tool-call-parser auto` (the default) asks each model's tokenizer service for its chat template once
and reads its markers (tool_parsers.detect): models behind one router may speak different formats (each
has its own tokenizer, `--tokenizer MODEL=HOST:PORT`). `--reasoning-parser` (qwen3, deepseek_r1) is off
unless set: a model that does not think would otherwise have its text searched for `<think>`.
"""

from __future__ import annotations

import asyncio

from router.api.reasoning import PARSERS as REASONING_PARSERS
from router.api.reasoning import ReasoningParser, ReasoningSpec
from router.api.tool_parsers import detect
from router.upstream.tokenizer import TokenizerClient


class OutputParsers:
    def __init__(self, tool_call_parser: str, reasoning_parser: str | None):
        self._tool_call_parser = tool_call_parser
        self._families: dict[str, str] = {}  # model name -> format read from its chat template
        self._lock = asyncio.Lock()
        self.reasoning: ReasoningSpec | None = (
            REASONING_PARSERS[reasoning_parser] if reasoning_parser else None
        )

    async def tool_family(self, model: str, tokenizer: TokenizerClient) -> str:
        """Model `model`'s tool-call format (a tool_parsers.PARSERS name); `tokenizer` is its own."""
        if self._tool_call_parser != "auto":
            return self._tool_call_parser
        if model not in self._families:
            async with self._lock:
                if model not in self._families:
                    info = await tokenizer.info()
                    self._families[model] = detect(info.chat_template)
        return self._families[model]

    def reasoning_parser(self) -> ReasoningParser | None:
        return ReasoningParser(self.reasoning) if self.reasoning is not None else None
