"""OpenAI Responses request bodies -> a validated request (pure: no I/O), for POST /v1/responses.

The server is stateless: nothing is stored, so `store` must be false or absent and `previous_response_id`
(and `conversation`) are a 400. Tools (`tools`, function-call items) and structured output (`text.format`
json_schema / json_object) are refused with a 400 naming the field until the tool and structured-output
parts (router/api/tool_parsers, router/api/structured_outputs.py) serve them: `_refuse_until_tools` is the
place they plug in. Fields that change nothing here (metadata, service_tier, user, truncation "disabled",
text.verbosity...) are accepted and ignored; reasoning.effort maps onto the chat template's thinking switch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from router.api.openai_schema import REASONING_EFFORTS, Message, template_kwargs
from router.api.sampling import parse_sampling, read_field, value_of
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
    echo: dict  # the request's settings the response object repeats (temperature, top_p, ...)


def parse_responses(body: object) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    reject_unknown(body, _FIELDS)
    _refuse_state(body)
    _refuse_until_tools(body)
    _check_ignored(body)
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
        echo={
            "temperature": value_of(sampling, "temperature"),
            "top_p": value_of(sampling, "top_p"),
            "max_output_tokens": max_tokens,
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "service_tier": body.get("service_tier") or "default",
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


def _refuse_until_tools(body: dict) -> None:
    """Tools and structured output: refused here until issue 20's parts serve them (see the docstring)."""
    if body.get("tools"):
        raise unsupported("tools")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise unsupported("tool_choice", f" set to {json.dumps(body['tool_choice'])[:60]}")
    text = opt_dict(body, "text") or {}
    reject_unknown(text, frozenset({"format", "verbosity"}))
    fmt = text.get("format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise unsupported("text.format", f" of type {json.dumps(kind)[:60]}")


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
    """A string (one user message) or a list of messages (OpenAI's easy input and message items)."""
    if isinstance(value, str):
        return (Message(role="user", content=value),)
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string or a non-empty list of input items.", "input")
    if len(value) > MAX_INPUT_ITEMS:
        raise bad_request(f"'input' may hold at most {MAX_INPUT_ITEMS} items.", "input")
    return tuple(_item(item, f"input[{i}]") for i, item in enumerate(value))


def _item(item: object, where: str) -> Message:
    if not isinstance(item, dict):
        raise bad_request(f"'{where}' must be an input item object.", "input")
    kind = item.get("type", "message")
    if kind != "message":  # function_call, function_call_output, reasoning...: with the tool parts
        raise unsupported(f"{where}.type", f" {json.dumps(kind)[:60]}")
    reject_unknown(item, frozenset({"type", "role", "content", "id", "status"}))
    role = item.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}.", "input")
    return Message(role=_ROLES[role], content=_content(item.get("content"), where))


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
