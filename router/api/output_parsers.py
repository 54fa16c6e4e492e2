"""Which tool-call format and reasoning parser this router reads a model's output with, and a request's
output setup: the grammar (`constraint`) and each choice's parsers (`outputs`), for chat completions and
Responses alike.

`--tool-call-parser auto` (the default) asks each model's tokenizer service for its chat template once
and reads its markers (tool_parsers.detect): models behind one router may speak different formats (each
has its own tokenizer, `--tokenizer MODEL=HOST:PORT`). `--reasoning-parser` (qwen3, deepseek_r1) is off
unless set: a model that does not think would otherwise have its text searched for `<think>`.
"""

from __future__ import annotations

import asyncio

from pagoda.engine.v1 import engine_pb2
from router.api.chat_output import ChoiceOutput
from router.api.reasoning import PARSERS as REASONING_PARSERS
from router.api.reasoning import ReasoningParser, ReasoningSpec
from router.api.structured_outputs import Constraint
from router.api.tool_parsers import detect
from router.api.tools import ToolRequest
from router.errors import bad_request
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

    def constraint(self, tools: ToolRequest, constraint: Constraint | None, field: str) -> Constraint | None:
        """The grammar of a forced tool_choice or of the requested format (`field`; never both); with a
        reasoning parser, it starts after the thinking."""
        forced = tools.constraint()
        if forced is not None and constraint is not None:
            raise bad_request(
                f"A forced 'tool_choice' ('required' or a named function) cannot be combined with {field}.",
                "tool_choice",
            )
        constraint = forced or constraint
        if constraint is not None and self.reasoning is not None:
            constraint = constraint.with_reasoning(self.reasoning.start, self.reasoning.end)
        return constraint

    async def outputs(
        self, tools: ToolRequest, model: str, tokenizer: TokenizerClient, n: int
    ) -> list[ChoiceOutput]:
        """Each of the n choices' output parsers (an empty list: the text goes out as it is)."""
        if not tools.active and self.reasoning is None:
            return []
        auto = tools.choice == "auto" and tools.active
        family = await self.tool_family(model, tokenizer) if auto else "hermes"
        return [ChoiceOutput(self.reasoning_parser(), tools.parser(family)) for _ in range(n)]


def keeping_special_tokens(
    sampling: engine_pb2.SamplingParams, outputs: list[ChoiceOutput]
) -> engine_pb2.SamplingParams:
    """`sampling`, or a copy that keeps special tokens in the text when a parser reads markers that are
    special tokens (Mistral's [TOOL_CALLS], Llama's <|python_tag|>)."""
    if not any(o.needs_special_tokens for o in outputs):
        return sampling
    kept = engine_pb2.SamplingParams()
    kept.CopyFrom(sampling)
    kept.skip_special_tokens = False
    return kept
