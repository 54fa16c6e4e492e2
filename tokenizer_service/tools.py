"""Tools in chat templates: what the model's template renders itself, and a fallback for those that don't.

Templates that know tools (Qwen, Hermes, Llama 3.1+, Mistral) take `tools=[...]` and assistant messages
with `tool_calls` (arguments as objects, as Hugging Face's chat-template convention has them), and render
them in the model's own format. A template that never mentions tools would drop them silently, so here:
  - `tools` become a system message that lists them and asks for `<tool_call>{...}</tool_call>` (the
    Hermes format, which the router's default parser reads);
  - an assistant's `tool_calls` become that same markup in its content.
`tool` messages stay as they are: a template either renders their role or fails with a clear error.
"""

from __future__ import annotations

import json
from typing import Any

MAX_TOOLS_JSON_BYTES = 1 << 20
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128


class ToolsError(ValueError):
    """Bad tools or tool calls: (field, message)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_tools(text: str) -> list[dict[str, Any]] | None:
    """ChatInput.tools_json -> the template's `tools` (None when empty)."""
    if not text:
        return None
    if len(text.encode()) > MAX_TOOLS_JSON_BYTES:
        raise ToolsError("chat.tools_json", f"must be at most {MAX_TOOLS_JSON_BYTES} bytes")
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolsError("chat.tools_json", f"not valid JSON: {e}") from e
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ToolsError("chat.tools_json", "must be a JSON array of tool objects")
    if len(tools) > MAX_TOOLS:
        raise ToolsError("chat.tools_json", f"may hold at most {MAX_TOOLS} tools")
    return tools


def tool_call_for_template(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A tool call as chat templates take it: OpenAI's shape, its arguments parsed into an object."""
    try:
        args: Any = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        args = arguments  # not JSON: templates get the text as it came
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def renders_tools(template: str) -> bool:
    return "tools" in template


def renders_tool_calls(template: str) -> bool:
    return "tool_calls" in template


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The fallback system text for a template that does not render tools (Hermes-style instructions)."""
    functions = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You may call one or more of these functions to help with the user's request:\n"
        f"{functions}\n"
        "To call a function, answer with one <tool_call></tool_call> block per call, each holding a JSON "
        'object with the function\'s "name" and its "arguments", like:\n'
        '<tool_call>\n{"name": "function_name", "arguments": {"arg": "value"}}\n</tool_call>'
    )


def calls_as_text(tool_calls: list[dict[str, Any]]) -> str:
    """An assistant's tool calls in the Hermes markup, for a template that does not render tool_calls."""
    blocks = []
    for call in tool_calls:
        fn = call["function"]
        blocks.append(
            "<tool_call>\n"
            + json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
            + "\n</tool_call>"
        )
    return "\n".join(blocks)


def with_fallbacks(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) to render with `template`: unchanged where the template knows tools."""
    if not renders_tool_calls(template):
        messages = [_calls_into_content(m) for m in messages]
    if tools and not renders_tools(template):
        text = describe_tools(tools)
        if messages and messages[0]["role"] == "system":
            messages = [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": text}, *messages]
        tools = None
    return messages, tools


def _calls_into_content(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    content = out.get("content") or ""
    out["content"] = f"{content}\n{calls_as_text(calls)}" if content else calls_as_text(calls)
    return out
