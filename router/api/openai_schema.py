"""OpenAI request bodies -> validated request objects. Everything here is pure: no I/O, no model facts
(those are checked in `sampling.check_model` once the model is resolved).

Fields are checked against allow-lists: an argument we do not know is a 400, as on OpenAI's own API, and
an argument we know but do not serve yet (`functions`, `audio`...) is a 400 that says so; neither is ever
silently ignored. Tools and structured outputs are read by their own modules (tools.py,
structured_outputs.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from engine_service.core.sampling_params import MAX_N
from pagoda.engine.v1 import engine_pb2
from pagoda.tokenizer.v1 import tokenizer_pb2
from router.api import structured_outputs, truncation
from router.api.sampling import SAMPLING_BODY_FIELDS, parse_sampling, read_field, value_of
from router.api.structured_outputs import Constraint
from router.api.tools import ToolRequest, message_tool_fields, parse_tools
from router.api.truncation import Truncation
from router.api.validation import opt_bool, opt_dict, opt_int, opt_str, reject_unknown, token_ids
from router.errors import bad_request, unsupported

MAX_PROMPTS = 256
# OpenAI's (and vLLM's) default max_tokens for legacy completions; chat's is whatever fits.
DEFAULT_COMPLETION_MAX_TOKENS = 16
MAX_CACHE_SALT = 1024

_COMMON = (
    SAMPLING_BODY_FIELDS
    | structured_outputs.FIELDS
    | truncation.FIELDS
    | {
        "model",
        "stream",
        "stream_options",
        "user",
        "cache_salt",
        # vLLM's extension: token ids beside the text (prompt_logprobs, vLLM's too, is a sampling field).
        "return_token_ids",
        "return_tokens_as_token_ids",  # vLLM's: logprobs name tokens "token_id:N"
    }
)

# OpenAI's reasoning_effort values: "none" turns the chat template's thinking off, the others on.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

# Known OpenAI fields we accept only in the value that asks for nothing we lack; a predicate says which.
# Fields that change nothing about generation (metadata, service_tier, verbosity...) are accepted and
# ignored; reasoning_effort is mapped onto the chat template's switch (see template_kwargs).
_NEUTRAL = {
    "functions": lambda v: not v,
    "function_call": lambda v: v in ("none", "auto"),
    "store": lambda v: v is False,  # nothing is stored: `true` would promise what is not kept
    "metadata": lambda v: isinstance(v, dict) and len(v) <= 16,
    "service_tier": lambda v: v in ("auto", "default", "flex", "scale", "priority"),
    "modalities": lambda v: v == ["text"],
    "audio": lambda v: False,
    "prediction": lambda v: False,
    "reasoning_effort": lambda v: v in REASONING_EFFORTS,
    "verbosity": lambda v: v in ("low", "medium", "high"),
    "web_search_options": lambda v: False,
}

_CHAT_FIELDS = (
    _COMMON
    | {
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "chat_template",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "echo",  # vLLM's: the final assistant message before the reply
    }
    | _NEUTRAL.keys()
)

_COMPLETION_FIELDS = _COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}

_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MESSAGE_FIELDS = frozenset(
    {
        "role",
        "content",
        "name",
        "tool_call_id",
        "tool_calls",
        "function_call",
        "refusal",
        "annotations",
        "audio",
        "reasoning_content",
    }
)


Message = tokenizer_pb2.ChatMessage  # parsed straight into the tokenizer service's message


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    sampling: engine_pb2.SamplingParams  # what the engine is sent (unset fields: the engine's defaults)
    stream: bool
    include_usage: bool
    continuous_usage: bool  # stream_options.continuous_usage_stats: usage on every chunk
    logprobs: bool
    add_generation_prompt: bool
    continue_final_message: bool
    chat_template_kwargs_json: str
    chat_template: str
    user: str | None
    prompt_cache_key: str | None  # OpenAI's hint that requests share a prefix: a session key for routing
    cache_salt: str
    tools: ToolRequest = ToolRequest()
    constraint: Constraint | None = None  # response_format / structured_outputs
    return_token_ids: bool = False  # vLLM's: prompt_token_ids on the response, token_ids on each choice
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:N"
    truncation: Truncation | None = None  # vLLM's truncate_prompt_tokens / truncation_side
    # vLLM's echo: the final message's text when it is the assistant's (the reply continues it), put before
    # each choice's content; "" otherwise.
    echo: str = ""


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompts: tuple[str | list[int], ...]  # each a text or token ids
    # What the engine is sent (best_of samples; prompt logprobs for echo; unset fields: the engine's defaults)
    sampling: engine_pb2.SamplingParams
    stream: bool
    include_usage: bool
    echo: bool
    user: str | None
    cache_salt: str
    constraint: Constraint | None = None  # response_format / structured_outputs
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage on every chunk
    n: int = 1  # choices returned per prompt (the engine draws best_of of them)
    best_of: int = 1
    logprobs: int | None = None  # as the client asked (the engine may be asked for more, for best_of)
    prompt_only: bool = False  # max_tokens 0 with echo: the prompt (and its logprobs) alone
    suffix: str = ""  # text after the gap, for fill-in-the-middle models
    prompt_logprobs: int | None = None  # vLLM's field, as asked
    return_token_ids: bool = False
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:N"
    truncation: Truncation | None = None  # vLLM's truncate_prompt_tokens / truncation_side
    default_max_tokens: bool = False  # max_tokens not given: 16, or what fits of it


def parse_chat(body: object) -> ChatRequest:
    body = _object(body)
    _check_fields(body, _CHAT_FIELDS)
    logprobs = opt_bool(body, "logprobs")
    top = read_field(body, "logprobs", param="top_logprobs")
    if top is not None and not logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    max_tokens = read_field(body, "max_tokens", param="max_completion_tokens")
    if max_tokens is None:
        max_tokens = read_field(body, "max_tokens")
    add_generation_prompt = opt_bool(body, "add_generation_prompt", default=True)
    continue_final = opt_bool(body, "continue_final_message")
    if add_generation_prompt and continue_final and "add_generation_prompt" in body:
        raise bad_request(
            "'continue_final_message' and 'add_generation_prompt' cannot both be true.",
            "continue_final_message",
        )
    kwargs = template_kwargs(opt_dict(body, "chat_template_kwargs"), body.get("reasoning_effort"))
    stream, include_usage, continuous = _stream(body)
    sampling = parse_sampling(body, max_tokens=max_tokens, logprobs=(top or 0) if logprobs else None)
    _set_prompt_logprobs(sampling, _prompt_logprobs(body))
    messages = _messages(body.get("messages"))
    echo = opt_bool(body, "echo") and messages[-1].role == "assistant"
    return ChatRequest(
        model=_model(body),
        messages=messages,
        sampling=sampling,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        logprobs=logprobs,
        add_generation_prompt=add_generation_prompt and not continue_final,
        continue_final_message=continue_final,
        chat_template_kwargs_json=json.dumps(kwargs) if kwargs else "",
        chat_template=opt_str(body, "chat_template") or "",
        user=opt_str(body, "user"),
        prompt_cache_key=opt_str(body, "prompt_cache_key"),
        cache_salt=_cache_salt(body),
        tools=parse_tools(body),
        constraint=structured_outputs.parse(body),
        return_token_ids=opt_bool(body, "return_token_ids"),
        tokens_as_ids=opt_bool(body, "return_tokens_as_token_ids"),
        truncation=truncation.parse(body),
        echo=messages[-1].content if echo else "",
    )


def parse_chat_batch(body: object) -> tuple[ChatRequest, ...]:
    """vLLM's POST /v1/chat/completions/batch: `messages` is a list of conversations, each read as one chat
    request's messages, every other field shared. Not streamed, as vLLM's; `echo` and `prompt_logprobs`
    (one prompt's, on the response) stay chat's own."""
    body = _object(body)
    conversations = body.get("messages")
    if (
        not isinstance(conversations, list)
        or not conversations
        or not all(isinstance(c, list) for c in conversations)
    ):
        raise bad_request(
            "'messages' must be a non-empty list of conversations (lists of messages).", "messages"
        )
    if len(conversations) > MAX_PROMPTS:
        raise bad_request(f"'messages' may hold at most {MAX_PROMPTS} conversations.", "messages")
    for name in ("stream", "echo", "prompt_logprobs"):
        if body.get(name) is not None and body.get(name) is not False:
            raise bad_request(f"'{name}' is not available on /v1/chat/completions/batch.", name)
    # The shared fields (tools, sampling, formats) are read once; each conversation brings only its messages.
    first = parse_chat({**body, "messages": conversations[0]})
    return (first, *(dataclasses.replace(first, messages=_messages(c)) for c in conversations[1:]))


def template_kwargs(kwargs: dict | None, reasoning_effort: str | None) -> dict:
    """The chat template's variables: the request's own, and OpenAI's reasoning_effort as the switch that
    reasoning templates read (Qwen3's `enable_thinking`; gpt-oss-style templates read `reasoning_effort`
    itself). What the request set itself wins."""
    kwargs = dict(kwargs or {})
    if reasoning_effort is not None:
        kwargs.setdefault("enable_thinking", reasoning_effort != "none")
        kwargs.setdefault("reasoning_effort", reasoning_effort)
    return kwargs


def _prompt_logprobs(body: dict) -> int | None:
    """vLLM's prompt_logprobs; as vLLM, a stream carries none (0 with a stream is accepted, and moot)."""
    k = read_field(body, "prompt_logprobs")
    if k and body.get("stream"):
        raise bad_request("'prompt_logprobs' is not available when 'stream' is true.", "prompt_logprobs")
    return None if body.get("stream") else k


def _set_prompt_logprobs(sampling: engine_pb2.SamplingParams, k: int | None) -> None:
    if k is not None:
        sampling.prompt_logprobs = k


def _completion_max_tokens(body: dict, echo: bool) -> int | None:
    """max_tokens as completions take it: 0 is the prompt alone (with echo only); None: not given."""
    value = body.get("max_tokens")
    if value == 0 and not isinstance(value, bool):
        if not echo:
            raise bad_request(
                "'max_tokens' must be >= 1 (0 only with 'echo': the prompt alone).", "max_tokens"
            )
        return 0
    return read_field(body, "max_tokens")


def parse_completion(body: object) -> CompletionRequest:
    """OpenAI's legacy completions, as its API does them: `echo` with `logprobs` scores the prompt (its first
    token's logprob null), `max_tokens` 0 with echo returns the prompt alone, `best_of` draws that many and
    returns the n most likely, `suffix` fills in the middle (models with FIM tokens)."""
    body = _object(body)
    _check_fields(body, _COMPLETION_FIELDS)
    echo = opt_bool(body, "echo")
    max_tokens = _completion_max_tokens(body, echo)
    default_max_tokens = max_tokens is None
    if default_max_tokens:
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    logprobs = read_field(body, "logprobs")
    # max_tokens 0: the engine still samples one token with the prompt's last position; it is dropped.
    sampling = parse_sampling(body, max_tokens=max(max_tokens, 1), logprobs=logprobs)
    n = value_of(sampling, "n")
    best_of = opt_int(body, "best_of", lo=1, hi=MAX_N) or n
    if best_of < n:
        raise bad_request(f"'best_of' ({best_of}) must be at least n ({n}).", "best_of")
    stream, include_usage, continuous = _stream(body)
    if best_of > n and stream:
        raise bad_request("'best_of' greater than n cannot be streamed.", "best_of")
    suffix = opt_str(body, "suffix") or ""
    if suffix and echo:
        raise bad_request("'suffix' cannot be combined with 'echo'.", "suffix")
    prompt_logprobs = _prompt_logprobs(body)
    asked = [k for k in (logprobs if echo else None, prompt_logprobs) if k is not None]
    _set_prompt_logprobs(sampling, max(asked, default=None))
    if best_of > n:  # ranking reads each sample's logprobs
        sampling.n = best_of
        sampling.logprobs = logprobs or 0
    return CompletionRequest(
        model=_model(body),
        prompts=_prompts(body.get("prompt")),
        sampling=sampling,
        stream=stream,
        include_usage=include_usage,
        echo=echo,
        user=opt_str(body, "user"),
        cache_salt=_cache_salt(body),
        constraint=structured_outputs.parse(body),
        continuous_usage=continuous,
        n=n,
        best_of=best_of,
        logprobs=logprobs,
        prompt_only=max_tokens == 0,
        suffix=suffix,
        prompt_logprobs=prompt_logprobs,
        return_token_ids=opt_bool(body, "return_token_ids"),
        tokens_as_ids=opt_bool(body, "return_tokens_as_token_ids"),
        truncation=truncation.parse(body),
        default_max_tokens=default_max_tokens,
    )


def _cache_salt(body: dict) -> str:
    """A tenant's own prefix-cache namespace (vLLM's extension): requests share cached blocks only when
    their salts are equal."""
    salt = opt_str(body, "cache_salt") or ""
    if len(salt) > MAX_CACHE_SALT:
        raise bad_request(f"'cache_salt' may be at most {MAX_CACHE_SALT} characters.", "cache_salt")
    return salt


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _check_fields(body: dict, known: frozenset[str]) -> None:
    reject_unknown(body, known)
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and name in known and not neutral(value):
            raise unsupported(name, _what(name, value))


def _what(name: str, value: object) -> str:
    """The refused value, in the words of the error message."""
    if name == "response_format" and isinstance(value, dict):
        return f" of type {value.get('type')!r}"
    if name in ("store", "service_tier", "reasoning_effort", "verbosity", "modalities"):
        return f" set to {json.dumps(value)[:60]}"
    return ""


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: the name of a served model (see GET /v1/models).", "model")
    return model


def _stream(body: dict) -> tuple[bool, bool, bool]:
    """(stream, include_usage, continuous_usage_stats). As vLLM: usage on every chunk only together with
    include_usage (the final usage chunk still comes last)."""
    stream = opt_bool(body, "stream")
    options = opt_dict(body, "stream_options")
    if options is None:
        return stream, False, False
    if not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    reject_unknown(options, frozenset({"include_usage", "continuous_usage_stats", "include_obfuscation"}))
    include_usage = opt_bool(options, "include_usage")
    return stream, include_usage, include_usage and opt_bool(options, "continuous_usage_stats")


def _messages(value: object) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of messages.", "messages")
    return tuple(_message(m, f"messages[{i}]") for i, m in enumerate(value))


def _message(m: object, where: str) -> Message:
    if not isinstance(m, dict):
        raise bad_request(f"'{where}' must be an object with 'role' and 'content'.", "messages")
    unknown = m.keys() - _MESSAGE_FIELDS
    if unknown:
        raise bad_request(f"'{where}' has an unrecognized field: {sorted(unknown)[0]}", "messages")
    role = m.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise bad_request(f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}.", "messages")
    for field in ("function_call", "audio"):
        if m.get(field):
            raise unsupported(f"{where}.{field}")
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise bad_request(f"'{where}.name' must be a string.", "messages")
    # Chat templates know "system"; OpenAI's newer "developer" role means the same to an open model.
    return Message(
        role="system" if role == "developer" else role,
        content=_content(m.get("content"), role, where),
        name=name,
        **message_tool_fields(m, role, where),
    )


def _content(content: object, role: str, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of content parts.", "messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            if isinstance(kind, str):
                raise unsupported(f"{where}.content[{j}].type", f" {kind!r}")
            raise bad_request(f"'{where}.content[{j}]' must be a content part with a 'type'.", "messages")
        if not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}.content[{j}].text' must be a string.", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def _prompts(value: object) -> tuple[str | list[int], ...]:
    """OpenAI's four prompt forms: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        raise bad_request("'prompt' must be a string, a list of strings, or (lists of) token ids.", "prompt")
    if all(isinstance(p, str) for p in value):
        prompts: tuple = tuple(value)
    elif all(isinstance(p, list) for p in value):
        prompts = tuple(token_ids(p, f"prompt[{i}]") for i, p in enumerate(value))
    elif all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        prompts = (token_ids(value, "prompt"),)
    else:
        raise bad_request("'prompt' must not mix strings, token ids and lists of token ids.", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise bad_request(f"'prompt' may hold at most {MAX_PROMPTS} prompts, got {len(prompts)}.", "prompt")
    return prompts


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    model: str
    prompt: str | None  # exactly one of prompt and messages
    messages: tuple[Message, ...]
    add_special_tokens: bool | None
    add_generation_prompt: bool
    continue_final_message: bool
    chat_template_kwargs_json: str
    tools_json: str = ""  # the chat template's tools (vLLM's /tokenize renders them as chat does)
    return_token_strs: bool = False  # vLLM's: each token's vocabulary string beside its id


def parse_tokenize(body: object) -> TokenizeRequest:
    """POST /tokenize: {"model", "prompt"} or {"model", "messages", ...} as vLLM takes them."""
    body = _object(body)
    reject_unknown(
        body,
        frozenset(
            {
                "model",
                "prompt",
                "messages",
                "add_special_tokens",
                "add_generation_prompt",
                "continue_final_message",
                "chat_template_kwargs",
                "tools",
                "return_token_strs",
            }
        ),
    )
    prompt = opt_str(body, "prompt")
    if prompt is not None and body.get("tools") is not None:
        raise bad_request("'tools' needs 'messages' (the chat template renders them).", "tools")
    if (prompt is None) == (body.get("messages") is None):
        raise bad_request("Give exactly one of 'prompt' and 'messages'.", "prompt")
    kwargs = opt_dict(body, "chat_template_kwargs")
    add_special = body.get("add_special_tokens")
    return TokenizeRequest(
        model=_model(body),
        prompt=prompt,
        messages=() if prompt is not None else _messages(body["messages"]),
        add_special_tokens=None if add_special is None else opt_bool(body, "add_special_tokens"),
        add_generation_prompt=opt_bool(body, "add_generation_prompt", default=True),
        continue_final_message=opt_bool(body, "continue_final_message"),
        chat_template_kwargs_json=json.dumps(kwargs) if kwargs else "",
        tools_json=parse_tools(body).tools_json,
        return_token_strs=opt_bool(body, "return_token_strs"),
    )


def parse_detokenize(body: object) -> tuple[str, list[int]]:
    """POST /detokenize: {"model", "tokens"}."""
    body = _object(body)
    reject_unknown(body, frozenset({"model", "tokens"}))
    return _model(body), token_ids(body.get("tokens"), "tokens")
