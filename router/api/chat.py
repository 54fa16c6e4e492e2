"""POST /v1/chat/completions."""

from __future__ import annotations

from aiohttp import web

from router.api.chat_output import ChoiceOutput, Piece
from router.api.context import CONTEXT, KEY_ID, STARTED
from router.api.generation import FINISH_REASONS, Generation
from router.api.limits import ResponseBudget
from router.api.logprobs import chat_logprobs, vllm_prompt_logprobs
from router.api.openai_schema import ChatRequest, parse_chat
from router.api.output_parsers import keeping_special_tokens
from router.api.request_body import read_request
from router.api.sampling import check_model, value_of
from router.api.stream_choices import stream_choices
from router.api.streaming import Chunks, dumps, json_str, running_usage
from router.api.structured_outputs import client_error
from router.errors import OpenAIError, bad_request
from router.upstream.dispatch import EngineStreamError


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_chat)
    if req.chat_template and not ctx.config.trust_request_chat_template:
        raise bad_request(
            "'chat_template' is not accepted by this server: it renders the model's own template "
            "(an operator may allow request templates with --trust-request-chat-template).",
            param="chat_template",
        )
    n = value_of(req.sampling, "n")
    ctx.limits.check_sequences(1, n)
    card = ctx.registry.resolve(req.model)
    constraint = ctx.parsers.constraint(
        req.tools, req.constraint, "'response_format' or 'structured_outputs'"
    )
    tokenizer = ctx.tokenizers.for_model(card.name)
    encoded = await tokenizer.encode_chat(
        req.messages,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template_kwargs_json=req.chat_template_kwargs_json,
        chat_template=req.chat_template,
        tools_json=req.tools.tools_json,
        max_tokens=card.max_model_len - 1,  # at least one token must fit after the prompt
    )
    prompt_len = len(encoded.token_ids)
    check_model(req.sampling, prompt_len, card, "messages")
    sampling = ctx.limits.apply(req.sampling, prompt_len, card.max_model_len, "messages")
    outputs = await ctx.parsers.outputs(req.tools, card.name, tokenizer, n)
    sampling = keeping_special_tokens(sampling, outputs)
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len
    if not req.stream:
        ctx.limits.check_response(n, max_tokens, sampling)
    session = ctx.session_key(request, req.prompt_cache_key, req.user)
    tokens = n * (prompt_len + max_tokens)
    with ctx.streams.hold(request.get(KEY_ID, ""), n, tokens):
        try:
            gen = await Generation.open(
                ctx.dispatcher,
                card,
                "chatcmpl",
                [encoded.token_ids],
                sampling,
                started=request[STARTED],
                cache_salt=ctx.cache_salt(request, req.cache_salt),
                session_key=session,
                structured_output=constraint.pb if constraint else None,
            )
        except OpenAIError as err:
            raise client_error(err, constraint) from None
        try:
            if req.stream:
                return await _stream(request, req, gen, encoded.token_ids, outputs)
            body = await _collect(req, gen, encoded.token_ids, ctx.limits.budget(), outputs)
            return web.json_response(body, dumps=dumps)
        finally:
            gen.close()


async def _collect(
    req: ChatRequest, gen: Generation, prompt_ids, budget: ResponseBudget, outputs: list[ChoiceOutput]
) -> dict:
    texts: list[list[str]] = [[] for _ in range(gen.num_choices)]
    token_ids: list[list[int]] = [[] for _ in range(gen.num_choices)]
    logprobs: list[list[dict]] = [[] for _ in range(gen.num_choices)]
    finish: list[str | None] = [None] * gen.num_choices
    prompt_positions = []
    budget.charge(req.echo * gen.num_choices)
    try:
        async for i, msg in gen.messages():
            budget.charge(msg.text, msg.logprobs if req.logprobs else ())
            budget.charge("", msg.prompt_logprobs)  # vLLM's prompt_logprobs: on the first message
            texts[i].append(msg.text)
            token_ids[i] += msg.token_ids
            if req.logprobs:
                logprobs[i].extend(chat_logprobs(msg.logprobs))
            if msg.prompt_logprobs:
                prompt_positions = list(msg.prompt_logprobs)
            if msg.finish_reason:
                finish[i] = FINISH_REASONS[msg.finish_reason]
    except EngineStreamError as err:
        raise err.error from None
    choices = []
    for i in range(gen.num_choices):
        message: dict = {"role": "assistant", "content": "".join(texts[i])}
        reason = finish[i]
        if outputs:  # tool calls and reasoning parsed out of the text
            out = outputs[i]
            out.feed(message["content"])
            out.finish()
            message, reason = out.message(), out.finish_reason(reason)
        if req.echo:
            message["content"] = req.echo + (message.get("content") or "")
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": {"content": logprobs[i]} if req.logprobs else None,
                "finish_reason": reason,
            }
        )
    if req.return_token_ids:  # vLLM's extension
        for choice, ids in zip(choices, token_ids, strict=True):
            choice["token_ids"] = ids
    body = {
        "id": gen.id,
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.model,
        "choices": choices,
        "usage": gen.usage,
    }
    if req.sampling.HasField("prompt_logprobs"):  # vLLM's extension
        body["prompt_logprobs"] = vllm_prompt_logprobs(prompt_positions, req.sampling.prompt_logprobs)
    if req.return_token_ids:
        body["prompt_token_ids"] = list(prompt_ids)
    return body


async def _stream(
    request: web.Request, req: ChatRequest, gen: Generation, prompt_ids, outputs: list[ChoiceOutput]
) -> web.StreamResponse:
    chunks = Chunks(gen.id, "chat.completion.chunk", gen.created, gen.model, req.include_usage)
    usage = running_usage(len(prompt_ids), 0) if req.continuous_usage else None
    # OpenAI opens every choice with the assistant role before any content (vLLM's return_token_ids: the
    # prompt's ids ride on the opening; vLLM's echo: the echoed assistant message is its content).
    prompt = f',"prompt_token_ids":{dumps(list(prompt_ids))}' if req.return_token_ids else ""
    opening = b"".join(
        chunks.choice(_delta(i, f'"role":"assistant","content":{json_str(req.echo)}', extra=prompt), usage)
        for i in range(gen.num_choices)
    )

    def content(i: int, msg, finish_reason: str) -> str | list[str]:
        lp = dumps({"content": chat_logprobs(msg.logprobs)}) if req.logprobs else "null"
        ids = f',"token_ids":{dumps(list(msg.token_ids))}' if req.return_token_ids else ""
        if not outputs:
            return _delta(i, f'"content":{json_str(msg.text)}', lp, finish_reason, extra=ids)
        return _piece_deltas(i, outputs[i].feed(msg.text), lp, extra=ids)

    def finish(i: int, reason: str) -> str | list[str]:
        if not outputs:
            return _delta(i, "", "null", reason)
        out = outputs[i]
        bodies = _piece_deltas(i, out.finish(), "null", required=False)
        final = out.finish_reason(reason.strip('"'))
        return [*bodies, _delta(i, "", "null", f'"{final}"')]

    return await stream_choices(
        request,
        gen,
        chunks,
        include_usage=req.include_usage,
        content=content,
        finish=finish,
        opening=opening,
        prompt_tokens=[len(prompt_ids)] if req.continuous_usage else None,
    )


def _piece_deltas(i: int, piece: Piece, logprobs: str, required: bool = True, extra: str = "") -> list[str]:
    """One chunk body per kind of text the piece holds; the logprobs (and token ids) ride on the first (or
    on an empty content delta, when everything this message brought is held back)."""
    deltas = []
    if piece.reasoning:
        deltas.append(f'"reasoning_content":{json_str(piece.reasoning)}')
    if piece.content:
        deltas.append(f'"content":{json_str(piece.content)}')
    if piece.calls:
        deltas.append(f'"tool_calls":{dumps([c.to_json() for c in piece.calls])}')
    if not deltas:
        keep = required and (logprobs != "null" or extra)
        return [_delta(i, '"content":""', logprobs, extra=extra)] if keep else []
    return [
        _delta(i, d, logprobs if k == 0 else "null", extra=extra if k == 0 else "")
        for k, d in enumerate(deltas)
    ]


def _delta(
    index: int, delta: str, logprobs: str = "null", finish_reason: str = "null", extra: str = ""
) -> str:
    return (
        f'{{"index":{index},"delta":{{{delta}}},"logprobs":{logprobs},"finish_reason":{finish_reason}'
        f"{extra}}}"
    )
