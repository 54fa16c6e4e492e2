"""Tool-call output parsers, one per model family, picked by `--tool-call-parser` or from the chat template.

| name          | format                                                      | models                       |
|---------------|-------------------------------------------------------------|------------------------------|
| `hermes`      | `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`  | Qwen 2.5 / 3, Hermes, others |
| `llama3_json` | `{"name": ..., "parameters": {...}}` (after <|python_tag|>) | Llama 3.1 / 3.2 / 3.3        |
| `mistral`     | `[TOOL_CALLS][{...}]` or `[TOOL_CALLS]name[ARGS]{...}`      | Mistral, Mixtral, Ministral  |

`auto` (the default) reads the model's chat template: its markers say which format it taught the model;
a template that knows no tools gets the Hermes instructions from the tokenizer service, so `hermes`.
"""

from __future__ import annotations

from collections.abc import Callable

from router.api.tool_parsers.base import ToolParser
from router.api.tool_parsers.forced import NamedCallParser, RequiredCallsParser
from router.api.tool_parsers.llama3 import Llama3JsonParser
from router.api.tool_parsers.markup import HermesParser, MistralParser

PARSERS: dict[str, Callable[[], ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}
CHOICES = ("auto", *PARSERS)


def detect(chat_template: str) -> str:
    """The parser a chat template's markers point to (hermes when none does)."""
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<tool_call>" in chat_template:
        return "hermes"
    if "<|python_tag|>" in chat_template or '"parameters"' in chat_template:
        return "llama3_json"
    return "hermes"


__all__ = ["CHOICES", "PARSERS", "NamedCallParser", "RequiredCallsParser", "ToolParser", "detect"]
