"""The sampling fields both endpoints share, read from an OpenAI body straight into the engine's
`SamplingParams` message, with the types and bounds of their one definition
(engine_service/core/sampling_params.py), and checked against the model once it is known.

A field the client did not give stays unset in the message, so the engine's default applies: the same
definition's. A value out of bounds is a 400 that names the field and quotes the value as sent.
"""

from __future__ import annotations

from typing import Any

from engine_service.core.sampling_params import SAMPLING_FIELDS
from engine_service.core.sampling_spec import SamplingError, check_min_tokens, check_vocab, proto_value
from pagoda.engine.v1 import engine_pb2
from router.errors import OpenAIError, bad_request
from router.upstream.model_card import ModelCard

# Read under their own names by both endpoints. max_tokens and logprobs are spelled per endpoint (chat also
# takes max_completion_tokens, and logprobs + top_logprobs) and come to parse_sampling already read;
# prompt_logprobs (vLLM's) is read by each endpoint too: completions' echo asks the engine for it as well.
_PER_ENDPOINT = ("max_tokens", "logprobs", "prompt_logprobs")
SHARED_FIELDS = tuple(name for name in SAMPLING_FIELDS if name not in _PER_ENDPOINT)
SAMPLING_BODY_FIELDS = frozenset(SHARED_FIELDS) | {"max_tokens", "prompt_logprobs"}


def parse_sampling(body: dict, *, max_tokens: int | None, logprobs: int | None) -> engine_pb2.SamplingParams:
    params = engine_pb2.SamplingParams()
    for name in SHARED_FIELDS:
        value = read_field(body, name)
        if value is not None:
            _set(params, name, value)
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if logprobs is not None:
        params.logprobs = logprobs
    _checked(check_min_tokens, params.min_tokens, max_tokens)
    return params


def read_field(body: dict, name: str, param: str | None = None) -> Any:
    """Body field `param` (default: `name`) as sampling field `name` holds it; None when absent or null."""
    param = param or name
    value = body.get(param)
    if value is None:
        return None
    field = SAMPLING_FIELDS[name]
    return _checked(field.check, _from_json(field.kind, value, param), param)


def value_of(params: engine_pb2.SamplingParams, name: str) -> Any:
    """A field of the message, its declared default when unset."""
    return proto_value(params, SAMPLING_FIELDS[name])


def check_model(params: engine_pb2.SamplingParams, prompt_len: int, model: ModelCard, param: str) -> None:
    """Checks what needs the model: the context length, and token ids against the vocabulary."""
    max_tokens = params.max_tokens if params.HasField("max_tokens") else None
    if prompt_len >= model.max_model_len or (
        max_tokens is not None and prompt_len + max_tokens > model.max_model_len
    ):
        asked = f"{prompt_len + (max_tokens or 1)} tokens ({prompt_len} in the prompt, " + (
            f"{max_tokens} for the completion)" if max_tokens else "at least 1 for the completion)"
        )
        raise bad_request(
            f"This model's maximum context length is {model.max_model_len} tokens. "
            f"However, you requested {asked}. Please reduce the length of the prompt or the completion.",
            param=param,
            code="context_length_exceeded",
        )
    _checked(check_vocab, "logit_bias", params.logit_bias.keys(), model.vocab_size)
    _checked(check_vocab, "stop_token_ids", params.stop_token_ids, model.vocab_size)


def _checked(check, *args) -> Any:
    try:
        return check(*args)
    except SamplingError as err:
        raise _bad(err) from None


def _bad(err: SamplingError) -> OpenAIError:
    return bad_request(str(err), param=err.param)


def _from_json(kind: str, value: Any, param: str) -> Any:
    """JSON's spelling of a field's value: integral numbers such as 2.0 as integers (OpenAI's own server
    takes them), one stop string as a list, and logit_bias keys (JSON strings) as token ids."""
    if kind == "int":
        return _integral(value)
    if kind == "token_ids" and isinstance(value, list):
        return [_integral(t) for t in value]
    if kind == "strings" and isinstance(value, str):
        return [value]
    if kind == "logit_bias" and isinstance(value, dict):
        return {_token_key(key, param): bias for key, bias in value.items()}
    return value


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _token_key(key: str, param: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise bad_request(f"'{param}' keys must be token ids, got {key!r}.", param=param) from None


def _set(params: engine_pb2.SamplingParams, name: str, value: Any) -> None:
    if isinstance(value, dict):
        getattr(params, name).update(value)
    elif isinstance(value, list):
        getattr(params, name).extend(value)
    else:
        setattr(params, name, value)
