"""POST /v1/chat/completions."""

from __future__ import annotations

from aiohttp import web

from router.api.body import read_request
from router.api.context import CONTEXT, KEY_ID, STARTED
from router.api.generation import FINISH_REASONS, Generation
from router.api.limits import ResponseBudget
from router.api.logprobs import chat_logprobs, vllm_prompt_logprobs
from router.api.openai_schema import ChatRequest, parse_chat
from router.api.sampling import check_model, value_of
from router.api.stream_choices import stream_choices
from router.api.streaming import Chunks, dumps, json_str, running_usage
from router.errors import bad_request
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
    encoded = await ctx.tokenizers.for_model(card.name).encode_chat(
        req.messages,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template_kwargs_json=req.chat_template_kwargs_json,
        chat_template=req.chat_template,
        max_tokens=card.max_model_len - 1,  # at least one token must fit after the prompt
    )
    prompt_len = len(encoded.token_ids)
    check_model(req.sampling, prompt_len, card, "messages")
    sampling = ctx.limits.apply(req.sampling, prompt_len, card.max_model_len, "messages")
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len
    if not req.stream:
        ctx.limits.check_response(n, max_tokens, sampling)
    session = ctx.session_key(request, req.prompt_cache_key, req.user)
    tokens = n * (prompt_len + max_tokens)
    with ctx.streams.hold(request.get(KEY_ID, ""), n, tokens):
        gen = await Generation.open(
            ctx.dispatcher,
            card,
            "chatcmpl",
            [encoded.token_ids],
            sampling,
            started=request[STARTED],
            cache_salt=ctx.cache_salt(request, req.cache_salt),
            session_key=session,
        )
        try:
            if req.stream:
                return await _stream(request, req, gen, encoded.token_ids)
            body = await _collect(req, gen, encoded.token_ids, ctx.limits.budget())
            return web.json_response(body, dumps=dumps)
        finally:
            gen.close()


async def _collect(req: ChatRequest, gen: Generation, prompt_ids, budget: ResponseBudget) -> dict:
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
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": req.echo + "".join(texts[i])},
            "logprobs": {"content": logprobs[i]} if req.logprobs else None,
            "finish_reason": finish[i],
        }
        for i in range(gen.num_choices)
    ]
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


async def _stream(request: web.Request, req: ChatRequest, gen: Generation, prompt_ids) -> web.StreamResponse:
    chunks = Chunks(gen.id, "chat.completion.chunk", gen.created, gen.model, req.include_usage)
    usage = running_usage(len(prompt_ids), 0) if req.continuous_usage else None
    # OpenAI opens every choice with the assistant role before any content (vLLM's return_token_ids: the
    # prompt's ids ride on the opening; vLLM's echo: the echoed assistant message is its content).
    prompt = f',"prompt_token_ids":{dumps(list(prompt_ids))}' if req.return_token_ids else ""
    opening = b"".join(
        chunks.choice(_delta(i, f'"role":"assistant","content":{json_str(req.echo)}', extra=prompt), usage)
        for i in range(gen.num_choices)
    )

    def content(i: int, msg, finish_reason: str) -> str:
        lp = dumps({"content": chat_logprobs(msg.logprobs)}) if req.logprobs else "null"
        ids = f',"token_ids":{dumps(list(msg.token_ids))}' if req.return_token_ids else ""
        return _delta(i, f'"content":{json_str(msg.text)}', lp, finish_reason, extra=ids)

    return await stream_choices(
        request,
        gen,
        chunks,
        include_usage=req.include_usage,
        content=content,
        finish=lambda i, reason: _delta(i, "", "null", reason),
        opening=opening,
        prompt_tokens=[len(prompt_ids)] if req.continuous_usage else None,
    )


def _delta(
    index: int, delta: str, logprobs: str = "null", finish_reason: str = "null", extra: str = ""
) -> str:
    return (
        f'{{"index":{index},"delta":{{{delta}}},"logprobs":{logprobs},"finish_reason":{finish_reason}'
        f"{extra}}}"
    )
