"""POST /v1/responses: OpenAI's Responses API, stateless, over the same chat path (template, engine stream,
tool-call and reasoning parsers, grammar).

The output is a list of items, in the order the model wrote them: a `reasoning` item (with a reasoning
parser), a `message` with one output_text part, and one `function_call` item per tool call. Streaming
sends OpenAI's events in its order, each as `event: <type>` + `data: <json>` with a sequence_number:

    response.created, response.in_progress               the response, status in_progress, no output
    per item: response.output_item.added
      message     response.content_part.added, response.output_text.delta ..., response.output_text.done,
                  response.content_part.done
      reasoning   the same with response.reasoning_text.delta / .done
      function    response.function_call_arguments.delta ..., response.function_call_arguments.done
    response.output_item.done
    response.completed, with usage (status "incomplete" at max_output_tokens: the openai SDK's stream
                                    helper finishes only on response.completed)

The non-streamed response is built by the same item builder from the same parser pieces, so both carry
the same items. An engine failure after the first event ends the stream with an `error` event. Parsing
lives in responses_schema.py.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from router.api.chat_output import ChoiceOutput, Piece
from router.api.context import CONTEXT, KEY_ID, STARTED
from router.api.generation import FINISH_REASONS, Generation
from router.api.output_parsers import keeping_special_tokens
from router.api.request_body import read_request
from router.api.responses_schema import ResponsesRequest, parse_responses
from router.api.sampling import check_model
from router.api.streaming import ClientGone, dumps, open_sse, write
from router.api.structured_outputs import client_error
from router.api.tool_parsers.calls import ToolCallDelta
from router.errors import OpenAIError
from router.upstream.dispatch import EngineStreamError


async def create_response(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_responses)
    card = ctx.registry.resolve(req.model)
    constraint = ctx.parsers.constraint(req.tools, req.constraint, "'text.format'")
    tokenizer = ctx.tokenizers.for_model(card.name)
    encoded = await tokenizer.encode_chat(
        req.messages,
        add_generation_prompt=True,
        continue_final_message=False,
        chat_template_kwargs_json=req.chat_template_kwargs_json,
        tools_json=req.tools.tools_json,
        max_tokens=card.max_model_len - 1,  # at least one token must fit after the prompt
    )
    prompt_len = len(encoded.token_ids)
    check_model(req.sampling, prompt_len, card, "input")
    sampling = ctx.limits.apply(req.sampling, prompt_len, card.max_model_len, "input")
    outputs = await ctx.parsers.outputs(req.tools, card.name, tokenizer, 1)
    sampling = keeping_special_tokens(sampling, outputs)
    parser = outputs[0] if outputs else None
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len
    with ctx.streams.hold(request.get(KEY_ID, ""), 1, prompt_len + max_tokens):
        try:
            gen = await Generation.open(
                ctx.dispatcher,
                card,
                "resp",
                [encoded.token_ids],
                sampling,
                started=request[STARTED],
                session_key=ctx.session_key(request, req.prompt_cache_key, req.user),
                structured_output=constraint.pb if constraint else None,
            )
        except OpenAIError as err:
            raise client_error(err, constraint) from None
        try:
            response = _Response(req, gen)
            if req.stream:
                return await _stream(request, response, gen, parser)
            items, finish, budget = _Items(_Events(streamed=False)), None, ctx.limits.budget()
            try:
                async for _, msg in gen.messages():
                    budget.charge(msg.text)
                    items.feed(_parse(parser, msg.text))
                    finish = FINISH_REASONS.get(msg.finish_reason, finish)
            except EngineStreamError as err:
                raise err.error from None
            items.finish(_finish(parser), finish)
            return web.json_response(response.body(items.items, finish, gen.usage), dumps=dumps)
        finally:
            gen.close()


def _parse(parser: ChoiceOutput | None, text: str) -> Piece:
    return parser.feed(text) if parser else Piece(content=text)


def _finish(parser: ChoiceOutput | None) -> Piece:
    return parser.finish() if parser else Piece()


class _Response:
    """The response object in its states: in progress (no output), then completed or incomplete."""

    def __init__(self, req: ResponsesRequest, gen: Generation):
        self.req = req
        self.id = "resp_" + gen.id.rsplit("-", 1)[-1]
        self.created_at = int(time.time())
        self.model = gen.model

    def body(self, output: list[dict] | None, finish: str | None, usage: dict | None) -> dict:
        done = output is not None
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
            "output": output or [],
            "previous_response_id": None,
            "reasoning": {"effort": self.req.reasoning_effort, "summary": None},
            "store": False,
            "truncation": "disabled",
            "usage": _usage(usage) if usage else None,
            "user": self.req.user,
            "metadata": self.req.metadata,
            **self.req.echo,
        }


class _Events:
    """SSE events with OpenAI's `event:` line and a growing sequence_number; `streamed` False: a
    non-streamed response, whose item builder sends nothing (no event is encoded)."""

    def __init__(self, streamed: bool = True) -> None:
        self.number = 0
        self.streamed = streamed

    def __call__(self, type_: str, **fields) -> bytes:
        if not self.streamed:
            return b""
        payload = dumps({"type": type_, "sequence_number": self.number, **fields})
        self.number += 1
        return f"event: {type_}\ndata: {payload}\n\n".encode()


# What differs between the two kinds of items that hold text.
_TEXT_ITEMS = {
    "message": ("msg_", "output_text", "response.output_text"),
    "reasoning": ("rs_", "reasoning_text", "response.reasoning_text"),
}


class _Items:
    """The output items as parser pieces arrive, and the events that tell a stream about them. One item is
    open at a time; a piece of another kind closes it (the parsers give reasoning, then content, then
    tool calls)."""

    def __init__(self, event: _Events):
        self.event = event
        self.items: list[dict] = []
        self._open: dict | None = None

    def feed(self, piece: Piece) -> bytes:
        events = []
        if piece.reasoning:
            events.append(self._text("reasoning", piece.reasoning))
        if piece.content:
            events.append(self._text("message", piece.content))
        events.extend(self._call(call) for call in piece.calls)
        return b"".join(events)

    def finish(self, piece: Piece, finish: str | None) -> bytes:
        """The parsers' last piece, then the open item closed ("incomplete" when the output was cut at
        max_output_tokens). An output with nothing in it is one empty message, as OpenAI returns."""
        events = self.feed(piece)
        if not self.items:
            events += self._open_text("message")
        return events + self._close("incomplete" if finish == "length" else "completed")

    def _text(self, kind: str, text: str) -> bytes:
        events = b""
        if self._open is None or self._open["type"] != kind:
            events = self._close("completed") + self._open_text(kind)
        part = self._open["content"][0]
        part["text"] += text
        name = _TEXT_ITEMS[kind][2] + ".delta"
        extra = {"logprobs": []} if kind == "message" else {}
        return events + self.event(name, **self._where(), content_index=0, delta=text, **extra)

    def _open_text(self, kind: str) -> bytes:
        prefix, part_type, _ = _TEXT_ITEMS[kind]
        item = {"id": prefix + uuid.uuid4().hex, "type": kind, "status": "in_progress"}
        if kind == "message":
            item["role"] = "assistant"
        else:
            item["summary"] = []
        item["content"] = []
        events = self._add(item)
        part = _part(part_type)
        item["content"].append(part)
        return events + self.event("response.content_part.added", **self._where(), content_index=0, part=part)

    def _call(self, delta: ToolCallDelta) -> bytes:
        events = b""
        if delta.id is not None:  # a new call: its id and name come first
            events = self._close("completed") + self._add(
                {
                    "id": "fc_" + uuid.uuid4().hex,
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": delta.id,
                    "name": delta.name,
                    "arguments": "",
                }
            )
        if delta.arguments:
            self._open["arguments"] += delta.arguments
            name = "response.function_call_arguments.delta"
            events += self.event(name, **self._where(), delta=delta.arguments)
        return events

    def _add(self, item: dict) -> bytes:
        self._open = item
        self.items.append(item)
        return self.event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _close(self, status: str) -> bytes:
        item = self._open
        if item is None:
            return b""
        item["status"] = status
        where = self._where()
        if item["type"] == "function_call":
            done = "response.function_call_arguments.done"
            events = self.event(done, **where, name=item["name"], arguments=item["arguments"])
        else:
            part = item["content"][0]
            name = _TEXT_ITEMS[item["type"]][2] + ".done"
            extra = {"logprobs": []} if item["type"] == "message" else {}
            events = self.event(name, **where, content_index=0, text=part["text"], **extra)
            events += self.event("response.content_part.done", **where, content_index=0, part=part)
        self._open = None
        return events + self.event("response.output_item.done", output_index=where["output_index"], item=item)

    def _where(self) -> dict:
        return {"output_index": len(self.items) - 1, "item_id": self._open["id"]}


def _part(part_type: str) -> dict:
    if part_type == "output_text":
        return {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return {"type": part_type, "text": ""}


def _usage(usage: dict) -> dict:
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


async def _stream(
    request: web.Request, response: _Response, gen: Generation, parser: ChoiceOutput | None
) -> web.StreamResponse:
    sse = await open_sse(request)
    metrics = request.app[CONTEXT].metrics
    event = _Events()
    items = _Items(event)
    try:
        started = response.body(None, None, None)
        await write(
            sse, event("response.created", response=started) + event("response.in_progress", response=started)
        )
        finish = None
        try:
            async for _, msg in gen.messages():
                finish = FINISH_REASONS.get(msg.finish_reason, finish)
                if msg.text:
                    events = items.feed(_parse(parser, msg.text))
                    if events:
                        await write(sse, events)
        except EngineStreamError as err:
            metrics.stream_errors.inc()
            error = err.error
            await write(sse, event("error", code=error.code or error.type, message=error.message, param=None))
            return sse
        events = items.finish(_finish(parser), finish)
        final = response.body(items.items, finish, gen.usage)
        await write(sse, events + event("response.completed", response=final))
    except ClientGone:
        metrics.client_disconnects.inc()
    return sse
