"""Server-sent events: the response headers, one `data:` event per chunk, and the closing `[DONE]`."""

from __future__ import annotations

import json

from aiohttp import web

from router.errors import OpenAIError

DONE = b"data: [DONE]\n\n"
# json's C string encoder: text deltas are the only free-form part of a chunk, so chunks are assembled
# from pre-rendered pieces around it (see the handlers) instead of a json.dumps of a dict per event.
json_str = json.encoder.encode_basestring


def event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


class Chunks:
    """Renders a stream's chunk events as head + choice + tail: the id, object, created and model parts are
    encoded once per stream, and only the choice is rendered per event."""

    def __init__(self, gen_id: str, object_: str, created: int, model: str, include_usage: bool):
        self._head = (
            f'data: {{"id":"{gen_id}","object":"{object_}","created":{created},"model":{json_str(model)},'
        )
        self._choices = (self._head + '"choices":[').encode()
        # With include_usage, OpenAI sends "usage": null on every chunk but the last.
        self._tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def choice(self, choice: str, usage: dict | None = None, top: str = "") -> bytes:
        """One choice's chunk; `usage`: its running usage (stream_options.continuous_usage_stats); `top`: more
        top-level fields, as ',"name":value' (vLLM's prompt_token_ids on a chat stream's first chunk)."""
        if usage is not None:
            return self._choices + f'{choice}]{top},"usage":{dumps(usage)}}}\n\n'.encode()
        if top:
            return self._choices + f"{choice}]{top}".encode() + self._tail[1:]  # the tail opens with "]"
        return self._choices + choice.encode() + self._tail

    def usage(self, usage: dict) -> bytes:
        return f'{self._head}"choices":[],"usage":{dumps(usage)}}}\n\n'.encode()


def running_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """A chunk's usage under continuous_usage_stats: its prompt's tokens and its choice's tokens so far
    (vLLM's shape; the final usage chunk sums every choice)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class ClientGone(Exception):
    """The client closed the connection mid-stream."""


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx-style proxies: do not buffer the stream
        }
    )
    try:
        await response.prepare(request)
    except ConnectionError as err:
        raise ClientGone() from err
    return response


def error_event(error: OpenAIError) -> bytes:
    return event(dumps(error.body()))


async def write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as err:  # aiohttp's ClientConnectionResetError is one
        raise ClientGone() from err
