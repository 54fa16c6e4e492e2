"""The body of a streamed completion, shared by chat and completions: an opening, then one chunk per engine
message and per finished choice, usage, and `[DONE]`. An engine that fails mid-stream ends it with an error
event; a client that goes away stops it (and the generation's cancellation frees the engine's blocks)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from router.api.context import CONTEXT
from router.api.generation import FINISH_REASONS, Generation
from router.api.streaming import DONE, Chunks, ClientGone, error_event, open_sse, running_usage, write
from router.upstream.dispatch import EngineStreamError

# (choice index, engine message, finish reason as JSON or "null") -> the choice's JSON body, or none;
# (choice index, finish reason as JSON) -> the body of a finish chunk of its own.
ContentChunk = Callable[[int, object, str], str | None]
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
    prompt_tokens: list[int] | None = None,
    finish_with_content: bool = False,
) -> web.StreamResponse:
    """`prompt_tokens` (each prompt's length): usage on every chunk (continuous_usage_stats).
    `finish_with_content`: a finish rides on its message's text chunk (completions, as vLLM and OpenAI's
    legacy API send it); otherwise it comes on an empty chunk of its own (chat, as OpenAI sends it)."""
    response = await open_sse(request)
    metrics = request.app[CONTEXT].metrics
    num_tokens = [0] * gen.num_choices  # each choice's tokens so far, for continuous usage

    def usage(i: int) -> dict | None:
        return None if prompt_tokens is None else running_usage(prompt_tokens[i // gen.n], num_tokens[i])

    try:
        if opening:
            await write(response, opening)
        try:
            async for i, msg in gen.messages():
                out = b""
                num_tokens[i] += 0 if gen.hide_completion else len(msg.token_ids)
                reason = f'"{FINISH_REASONS[msg.finish_reason]}"' if msg.finish_reason else "null"
                body = None
                if msg.text or msg.token_ids:  # a message can carry tokens whose text is held back
                    body = content(i, msg, reason if finish_with_content else "null")
                    out = b"" if body is None else chunks.choice(body, usage(i))
                if msg.finish_reason and (body is None or not finish_with_content):
                    out += chunks.choice(finish(i, reason), usage(i))
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
