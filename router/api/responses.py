"""POST /v1/responses: OpenAI's Responses API, stateless, over the same chat path (template, engine stream).

One output item, an assistant message with one output_text part. Streaming sends OpenAI's events in its
order, each as `event: <type>` + `data: <json>` with a sequence_number:

    response.created, response.in_progress               the response, status in_progress, no output
    response.output_item.added, response.content_part.added
    response.output_text.delta ...                       one per engine message with text
    response.output_text.done, response.content_part.done, response.output_item.done
    response.completed, with usage (status "incomplete" at max_output_tokens: the openai SDK's stream
                                                         helper finishes only on response.completed)

An engine failure after the first event ends the stream with an `error` event. Parsing lives in
responses_schema.py (tools and structured output plug in there).
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from router.api.context import CONTEXT, KEY_ID, STARTED
from router.api.generation import FINISH_REASONS, Generation
from router.api.request_body import read_request
from router.api.responses_schema import ResponsesRequest, parse_responses
from router.api.sampling import check_model
from router.api.streaming import ClientGone, dumps, open_sse, write
from router.upstream.dispatch import EngineStreamError


async def create_response(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_responses)
    card = ctx.registry.resolve(req.model)
    encoded = await ctx.tokenizers.for_model(card.name).encode_chat(
        req.messages,
        add_generation_prompt=True,
        continue_final_message=False,
        chat_template_kwargs_json=req.chat_template_kwargs_json,
        max_tokens=card.max_model_len - 1,  # at least one token must fit after the prompt
    )
    prompt_len = len(encoded.token_ids)
    check_model(req.sampling, prompt_len, card, "input")
    sampling = ctx.limits.apply(req.sampling, prompt_len, card.max_model_len, "input")
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len
    with ctx.streams.hold(request.get(KEY_ID, ""), 1, prompt_len + max_tokens):
        gen = await Generation.open(
            ctx.dispatcher,
            card,
            "resp",
            [encoded.token_ids],
            sampling,
            started=request[STARTED],
            session_key=ctx.session_key(request, req.prompt_cache_key, req.user),
        )
        try:
            response = _Response(req, gen)
            if req.stream:
                return await _stream(request, response, gen)
            text, finish, budget = [], None, ctx.limits.budget()
            try:
                async for _, msg in gen.messages():
                    budget.charge(msg.text)
                    text.append(msg.text)
                    finish = FINISH_REASONS.get(msg.finish_reason, finish)
            except EngineStreamError as err:
                raise err.error from None
            return web.json_response(response.body("".join(text), finish, gen.usage), dumps=dumps)
        finally:
            gen.close()


class _Response:
    """The response object in its states: in progress (no output), then completed or incomplete."""

    def __init__(self, req: ResponsesRequest, gen: Generation):
        self.req = req
        self.id = "resp_" + gen.id.rsplit("-", 1)[-1]
        self.message_id = "msg_" + uuid.uuid4().hex
        self.created_at = int(time.time())
        self.model = gen.model

    def body(self, text: str | None, finish: str | None, usage: dict | None) -> dict:
        done = text is not None
        incomplete = done and finish == "length"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": ("incomplete" if incomplete else "completed") if done else "in_progress",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.req.instructions,
            "model": self.model,
            "output": [self.message(text, "incomplete" if incomplete else "completed")] if done else [],
            "previous_response_id": None,
            "reasoning": {"effort": self.req.reasoning_effort, "summary": None},
            "store": False,
            "text": {"format": {"type": "text"}},
            "tools": [],
            "truncation": "disabled",
            "usage": _usage(usage) if usage else None,
            "user": self.req.user,
            "metadata": self.req.metadata,
            **self.req.echo,
        }

    def message(self, text: str | None, status: str) -> dict:
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [] if text is None else [_text_part(text)],
        }


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: dict) -> dict:
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


class _Events:
    """SSE events with OpenAI's `event:` line and a growing sequence_number."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, type_: str, **fields) -> bytes:
        payload = dumps({"type": type_, "sequence_number": self.number, **fields})
        self.number += 1
        return f"event: {type_}\ndata: {payload}\n\n".encode()


async def _stream(request: web.Request, response: _Response, gen: Generation) -> web.StreamResponse:
    sse = await open_sse(request)
    metrics = request.app[CONTEXT].metrics
    event = _Events()
    part = {"output_index": 0, "item_id": response.message_id, "content_index": 0}
    try:
        await write(
            sse,
            event("response.created", response=response.body(None, None, None))
            + event("response.in_progress", response=response.body(None, None, None))
            + event("response.output_item.added", output_index=0, item=response.message(None, "in_progress"))
            + event("response.content_part.added", **part, part=_text_part("")),
        )
        texts, finish = [], None
        try:
            async for _, msg in gen.messages():
                finish = FINISH_REASONS.get(msg.finish_reason, finish)
                if msg.text:
                    texts.append(msg.text)
                    await write(sse, event("response.output_text.delta", **part, delta=msg.text, logprobs=[]))
        except EngineStreamError as err:
            metrics.stream_errors.inc()
            error = err.error
            await write(sse, event("error", code=error.code or error.type, message=error.message, param=None))
            return sse
        text = "".join(texts)
        final = response.body(text, finish, gen.usage)
        await write(
            sse,
            event("response.output_text.done", **part, text=text, logprobs=[])
            + event("response.content_part.done", **part, part=_text_part(text))
            + event("response.output_item.done", output_index=0, item=final["output"][0])
            + event("response.completed", response=final),
        )
    except ClientGone:
        metrics.client_disconnects.inc()
    return sse
