"""Tool calling in the OpenAI API: `tools`, `tool_choice`, `parallel_tool_calls`, and the tool calls and
results in the conversation.

    tool_choice "none"      tools are left out of the prompt; the output is plain content
    tool_choice "auto"      tools are rendered by the chat template; the model's own tool-call markup is
                            parsed out of its output (router/api/tool_parsers)
    tool_choice "required"  the engine's grammar makes the output a JSON list of 1+ calls (1 with
                            parallel_tool_calls false), each {"name": one of the tools, "parameters": an
                            object valid for that tool's parameters schema}
    {"type": "function", "function": {"name": "f"}}  the grammar makes the output f's arguments object
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pagoda.tokenizer.v1 import tokenizer_pb2
from router.api.structured_outputs import Constraint, json_schema
from router.api.tool_parsers import PARSERS, NamedCallParser, RequiredCallsParser, ToolParser
from router.api.validation import opt_bool
from router.errors import bad_request

MAX_TOOLS = 128
MAX_TOOLS_JSON = 1 << 20
MAX_TOOL_CALLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_TOOL_FIELDS = frozenset({"type", "function"})
_FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})
_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class ToolRequest:
    functions: tuple[dict, ...] = ()  # each {"name", "description"?, "parameters"?}
    choice: str = "auto"  # auto | none | required | named
    named: str | None = None
    parallel: bool = True
    tools_json: str = field(default="", repr=False)  # for the tokenizer service ("" when none are rendered)

    @property
    def active(self) -> bool:
        """Whether the output is parsed for tool calls."""
        return bool(self.functions) and self.choice != "none"

    def constraint(self) -> Constraint | None:
        """The grammar of a forced tool_choice; None for auto and none."""
        if self.choice == "named":
            fn = next(f for f in self.functions if f["name"] == self.named)
            return json_schema(fn.get("parameters") or _ANY_OBJECT, "tools.function.parameters")
        if self.choice != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": f["name"]},
                    "parameters": f.get("parameters") or _ANY_OBJECT,
                },
                "required": ["name", "parameters"],
            }
            for f in self.functions
        ]
        schema: dict = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if not self.parallel:
            schema["maxItems"] = 1
        return json_schema(schema, "tools")

    def parser(self, family: str) -> ToolParser | None:
        """A fresh parser for one choice's output; `family`: the model's format (see tool_parsers)."""
        if not self.active:
            return None
        if self.choice == "named":
            return NamedCallParser(self.named)
        if self.choice == "required":
            return RequiredCallsParser()
        return PARSERS[family]()


def parse_tools(body: dict) -> ToolRequest:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tools.", "tools")
    if len(tools) > MAX_TOOLS:
        raise bad_request(f"'tools' may hold at most {MAX_TOOLS} tools, got {len(tools)}.", "tools")
    functions = tuple(_function(t, i) for i, t in enumerate(tools))
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise bad_request("'tools' names a function twice.", "tools")
    choice, named = _choice(body.get("tool_choice"), names)
    parallel = opt_bool(body, "parallel_tool_calls", default=True)
    tools_json = ""
    if functions and choice != "none":
        tools_json = json.dumps([{"type": "function", "function": f} for f in functions], ensure_ascii=False)
        if len(tools_json.encode()) > MAX_TOOLS_JSON:
            raise bad_request(f"'tools' may take at most {MAX_TOOLS_JSON} bytes of JSON.", "tools")
    return ToolRequest(functions, choice, named, parallel, tools_json)


def message_tool_fields(m: dict, role: str, where: str) -> dict:
    """The tool fields of one conversation message, as the tokenizer service's ChatMessage takes them."""
    out: dict = {}
    calls = m.get("tool_calls")
    if calls:
        if role != "assistant":
            raise bad_request(f"'{where}.tool_calls' is only allowed on assistant messages.", "messages")
        if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
            raise bad_request(
                f"'{where}.tool_calls' must be a list of at most {MAX_TOOL_CALLS} calls.", "messages"
            )
        out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    call_id = m.get("tool_call_id")
    if call_id is not None:
        if not isinstance(call_id, str):
            raise bad_request(f"'{where}.tool_call_id' must be a string.", "messages")
        out["tool_call_id"] = call_id
    return out


def _function(tool: object, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise bad_request(f'\'{where}\' must be {{"type": "function", "function": {{...}}}}.', "tools")
    unknown = tool.keys() - _TOOL_FIELDS
    fn = tool.get("function")
    if unknown or not isinstance(fn, dict):
        raise bad_request(f'\'{where}\' must be {{"type": "function", "function": {{...}}}}.', "tools")
    unknown = fn.keys() - _FUNCTION_FIELDS
    if unknown:
        raise bad_request(f"'{where}.function' has an unrecognized field: {sorted(unknown)[0]}", "tools")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request(
            f"'{where}.function.name' must be 1 to 64 letters, digits, '_', '.' or '-'.", "tools"
        )
    if "description" in fn and not isinstance(fn["description"], str):
        raise bad_request(f"'{where}.function.description' must be a string.", "tools")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise bad_request(f"'{where}.function.parameters' must be a JSON schema object.", "tools")
    return {k: v for k, v in fn.items() if k != "strict"}


def _choice(value: object, names: list[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if value in ("auto", "none", "required"):
        if value == "required" and not names:
            raise bad_request("'tool_choice' is 'required' but no 'tools' were given.", "tool_choice")
        return value, None
    fn = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise bad_request(
            "'tool_choice' must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            "tool_choice",
        )
    if name not in names:
        raise bad_request(
            f"'tool_choice' names the function {name!r}, which is not in 'tools'.", "tool_choice"
        )
    return "named", name


def _tool_call(call: object, where: str) -> tokenizer_pb2.ToolCall:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request(f"'{where}' must be a function call with a 'function.name'.", "messages")
    arguments = fn.get("arguments", "")
    if isinstance(arguments, dict):  # some clients send the object itself
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise bad_request(f"'{where}.function.arguments' must be a JSON string.", "messages")
    call_id = call.get("id", "")
    if not isinstance(call_id, str):
        raise bad_request(f"'{where}.id' must be a string.", "messages")
    return tokenizer_pb2.ToolCall(id=call_id, name=fn["name"], arguments=arguments)
