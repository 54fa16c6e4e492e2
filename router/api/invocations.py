"""POST /invocations: the single route SageMaker (and vLLM, for it) sends every request to; the body's own
fields say which API it is: `messages` chat completions, `prompt` completions, `input` embeddings. The body
is read once (aiohttp keeps it), so the chosen handler reads the same bytes."""

from __future__ import annotations

from aiohttp import web

from router.api import chat, completions, embeddings
from router.api.request_body import read_request
from router.errors import bad_request

_ROUTES = {
    "messages": chat.chat_completions,
    "prompt": completions.completions,
    "input": embeddings.embeddings,
}


def route_of(body: object) -> str:
    """The field that names the API (pure: it may run in the body pool's process)."""
    if isinstance(body, dict):
        for field in _ROUTES:
            if field in body:
                return field
    raise bad_request(
        "/invocations takes a chat request ('messages'), a completions request ('prompt') or an "
        "embeddings request ('input').",
        "messages",
    )


async def invocations(request: web.Request) -> web.StreamResponse:
    return await _ROUTES[await read_request(request, route_of)](request)
