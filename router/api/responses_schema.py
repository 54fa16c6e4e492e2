"""OpenAI Responses request bodies -> a validated request (pure: no I/O), for POST /v1/responses.

The server is stateless: nothing is stored, so `store` must be false or absent and `previous_response_id`
(and `conversation`) are a 400; the client sends the whole conversation as `input` (a previous response's
`output` items can be appended to it as they are). Function tools and structured output use the chat
path's parts, in Responses' spelling:

    tools        [{"type": "function", "name", "description", "parameters", "strict"}] -> chat's tools
                 (other tool types, built-in to OpenAI's service, are a 400 naming them)
    tool_choice  "auto" | "none" | "required" | {"type": "function", "name"}
    text.format  {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "name", "schema",
                 "strict", "description"} -> the engine's grammar
    input items  message, function_call (an assistant tool call), function_call_output (a tool message),
                 reasoning (dropped: templates do not replay earlier thinking)

Fields that change nothing here (metadata, service_tier, user, truncation "disabled", text.verbosity,
max_tool_calls: it bounds OpenAI's built-in tools) are accepted and ignored; reasoning.effort maps onto the
chat template's thinking switch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from pagoda.tokenizer.v1 import tokenizer_pb2
from router.api.openai_schema import REASONING_EFFORTS, Message, template_kwargs
from router.api.sampling import parse_sampling, read_field, value_of
from router.api.structured_outputs import Constraint, json_schema
from router.api.tools import MAX_TOOL_CALLS, ToolRequest, parse_tools
from router.api.validation import opt_bool, opt_dict, opt_str, reject_unknown
from router.errors import bad_request, unsupported

MAX_INPUT_ITEMS = 2048

_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "store",
        "previous_response_id",
        "conversation",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tool_calls",
        "text",
        "reasoning",
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "truncation",
        "include",
        "background",
        "top_logprobs",
        # Extensions most OpenAI-compatible servers accept.
        "top_k",
        "min_p",
        "repetition_penalty",
        "seed",
        "chat_template_kwargs",
    }
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = {"input_text", "output_text", "text"}
_TOOL_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})
_REASONING_FIELDS = frozenset({"type", "id", "summary", "content", "encrypted_content", "status"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    messages: tuple[Message, ...]
    instructions: str | None
    sampling: engine_pb2.SamplingParams  # what the engine is sent (unset fields: the engine's defaults)
    stream: bool
    chat_template_kwargs_json: str
    metadata: dict
    user: str | None
    prompt_cache_key: str | None
    reasoning_effort: str | None
    echo: dict  # the request's settings the response object repeats (temperature, top_p, tools, text...)
    tools: ToolRequest = ToolRequest()
    constraint: Constraint | None = None  # text.format


def parse_responses(body: object) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    reject_unknown(body, _FIELDS)
    _refuse_state(body)
    _check_ignored(body)
    tools = _tools(body)
    text = opt_dict(body, "text") or {}
    reject_unknown(text, frozenset({"format", "verbosity"}))
    fmt = _format(text.get("format"))
    reasoning = opt_dict(body, "reasoning") or {}
    reject_unknown(reasoning, frozenset({"effort", "summary", "generate_summary"}))
    effort = reasoning.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise bad_request(f"'reasoning.effort' must be one of {list(REASONING_EFFORTS)}.", "reasoning.effort")
    instructions = opt_str(body, "instructions")
    messages = _input(body.get("input"))
    if instructions:
        messages = (Message(role="system", content=instructions), *messages)
    kwargs = template_kwargs(opt_dict(body, "chat_template_kwargs"), effort)
    max_tokens = read_field(body, "max_tokens", param="max_output_tokens")
    sampling = parse_sampling(body, max_tokens=max_tokens, logprobs=None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: the name of a served model (see GET /v1/models).", "model")
    return ResponsesRequest(
        model=model,
        messages=messages,
        instructions=instructions,
        sampling=sampling,
        stream=opt_bool(body, "stream"),
        chat_template_kwargs_json=json.dumps(kwargs) if kwargs else "",
        metadata=opt_dict(body, "metadata") or {},
        user=opt_str(body, "user"),
        prompt_cache_key=opt_str(body, "prompt_cache_key"),
        reasoning_effort=effort,
        tools=tools,
        constraint=fmt,
        echo={
            "temperature": value_of(sampling, "temperature"),
            "top_p": value_of(sampling, "top_p"),
            "max_output_tokens": max_tokens,
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "service_tier": body.get("service_tier") or "default",
            "tools": [_tool_echo(f) for f in tools.functions],
            "text": {"format": text.get("format") or {"type": "text"}},
        },
    )


def _refuse_state(body: dict) -> None:
    """Stateless: nothing to store, nothing to continue from."""
    if body.get("store"):
        raise bad_request(
            "'store' set to true is not supported: this server keeps no responses (send store: false).",
            "store",
        )
    for name in ("previous_response_id", "conversation"):
        if body.get(name):
            raise bad_request(
                f"'{name}' is not supported: this server keeps no responses; send the whole conversation "
                "as 'input'.",
                name,
            )
    if body.get("background"):
        raise unsupported("background")


def _tools(body: dict) -> ToolRequest:
    """Responses' flat function tools and tool_choice, read by the chat path's parser in its spelling."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("'tools' must be a list of tools.", "tools")
    chat_tools = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise bad_request(f"'tools[{i}]' must be a tool object.", "tools")
        if tool.get("type") != "function":
            kind = json.dumps(tool.get("type"))[:60]
            raise unsupported(f"tools[{i}].type", f" {kind} (function tools only)")
        reject_unknown(tool, _TOOL_FIELDS)
        chat_tools.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise unsupported("tool_choice", f" set to {json.dumps(choice)[:60]}")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return parse_tools(
        {"tools": chat_tools, "tool_choice": choice, "parallel_tool_calls": body.get("parallel_tool_calls")}
    )


def _tool_echo(function: dict) -> dict:
    """A function tool as the response object repeats it."""
    return {"type": "function", "parameters": None, "strict": None, "description": None, **function}


def _format(fmt: object) -> Constraint | None:
    """text.format: free text, any JSON object, or JSON valid for a schema."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        reject_unknown(fmt, frozenset({"type"}))
        return None
    if kind == "json_object":
        reject_unknown(fmt, frozenset({"type"}))
        return Constraint(engine_pb2.StructuredOutput(json_object=True), "text.format")
    if kind == "json_schema":
        reject_unknown(fmt, frozenset({"type", "name", "schema", "strict", "description"}))
        if not isinstance(fmt.get("name", ""), str):
            raise bad_request("'text.format.name' must be a string.", "text.format")
        if "schema" not in fmt:
            raise bad_request("'text.format.schema' is required for a json_schema format.", "text.format")
        return json_schema(fmt["schema"], "text.format.schema")
    raise bad_request(
        f"'text.format.type' must be one of 'text', 'json_object', 'json_schema', got {kind!r}.",
        "text.format",
    )


def _check_ignored(body: dict) -> None:
    """Fields that change nothing about generation: accepted when well-formed, then ignored."""
    metadata = opt_dict(body, "metadata")
    if metadata is not None and len(metadata) > 16:
        raise bad_request("'metadata' may hold at most 16 keys.", "metadata")
    if body.get("truncation") not in (None, "disabled"):
        raise unsupported("truncation", f" set to {json.dumps(body['truncation'])[:60]}")
    if body.get("include"):
        raise unsupported("include")
    if body.get("top_logprobs"):
        raise unsupported("top_logprobs")
    opt_dict(body, "stream_options")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")


def _input(value: object) -> tuple[Message, ...]:
    """A string (one user message) or a list of input items, as chat messages: consecutive function_call
    items join the assistant message before them, as one assistant turn with several tool calls."""
    if isinstance(value, str):
        return (Message(role="user", content=value),)
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string or a non-empty list of input items.", "input")
    if len(value) > MAX_INPUT_ITEMS:
        raise bad_request(f"'input' may hold at most {MAX_INPUT_ITEMS} items.", "input")
    messages: list[Message] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an input item object.", "input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            if last is None or last.role != "assistant" or len(last.tool_calls) >= MAX_TOOL_CALLS:
                last = Message(role="assistant", content="")
                messages.append(last)
            last.tool_calls.append(call)
        elif kind == "function_call_output":
            messages.append(_function_call_output(item, where))
        elif kind == "reasoning":
            reject_unknown(item, _REASONING_FIELDS)
        else:
            raise unsupported(f"{where}.type", f" {json.dumps(kind)[:60]}")
    return tuple(messages)


def _message(item: dict, where: str) -> Message:
    reject_unknown(item, frozenset({"type", "role", "content", "id", "status"}))
    role = item.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}.", "input")
    return Message(role=_ROLES[role], content=_content(item.get("content"), where))


def _function_call(item: dict, where: str) -> tokenizer_pb2.ToolCall:
    reject_unknown(item, frozenset({"type", "call_id", "name", "arguments", "id", "status"}))
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise bad_request(f"'{where}.{name}' must be a string.", "input")
    return tokenizer_pb2.ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])


def _function_call_output(item: dict, where: str) -> Message:
    reject_unknown(item, frozenset({"type", "call_id", "output", "id", "status"}))
    if not isinstance(item.get("call_id"), str):
        raise bad_request(f"'{where}.call_id' must be a string.", "input")
    output = item.get("output")
    text = output if isinstance(output, str) else _content(output, f"{where}.output")
    return Message(role="tool", content=text, tool_call_id=item["call_id"])


def _content(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of content parts.", "input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            if isinstance(kind, str):
                raise unsupported(f"{where}.content[{j}].type", f" {kind!r}")
            raise bad_request(f"'{where}.content[{j}]' must be a content part with a 'type'.", "input")
        if not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}.content[{j}].text' must be a string.", "input")
        texts.append(part["text"])
    return "\n".join(texts)
