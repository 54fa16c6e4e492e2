"""The body of a streamed completion, shared by chat and completions: an opening, then one chunk per engine
message and per finished choice, usage, and `[DONE]`. An engine that fails mid-stream ends it with an error
event; a client that goes away stops it (and the generation's cancellation frees the engine's blocks)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from router.api.context import CONTEXT
from router.api.generation import FINISH_REASONS, Generation
from router.api.streaming import DONE, Chunks, ClientGone, error_event, open_sse, write
from router.upstream.dispatch import EngineStreamError

# (choice index, engine message) -> the choice's JSON body; (choice index, finish reason as JSON) -> body
ContentChunk = Callable[[int, object], str]
FinishChunk = Callable[[int, str], str]


async def stream_choices(
    request: web.Request,
    gen: Generation,
    chunks: Chunks,
    *,
    include_usage: bool,
    content: ContentChunk,
    finish: FinishChunk,
    opening: bytes = b"",
) -> web.StreamResponse:
    response = await open_sse(request)
    metrics = request.app[CONTEXT].metrics
    try:
        if opening:
            await write(response, opening)
        try:
            async for i, msg in gen.messages():
                out = b""
                if msg.text or msg.token_ids:  # a message can carry tokens whose text is held back
                    out = chunks.choice(content(i, msg))
                if msg.finish_reason:
                    out += chunks.choice(finish(i, f'"{FINISH_REASONS[msg.finish_reason]}"'))
                if out:
                    await write(response, out)
        except EngineStreamError as err:
            metrics.stream_errors.inc()
            await write(response, error_event(err.error) + DONE)
            return response
        if include_usage:
            await write(response, chunks.usage(gen.usage))
        await write(response, DONE)
    except ClientGone:
        metrics.client_disconnects.inc()
    return response
