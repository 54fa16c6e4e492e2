"""POST /v1/completions: one or more prompts (text or token ids), `n` samples each, optional echo."""

from __future__ import annotations

import asyncio

from aiohttp import web

from router.api.body import read_request
from router.api.context import CONTEXT, KEY_ID, STARTED, RouterContext
from router.api.generation import FINISH_REASONS, Generation
from router.api.limits import ResponseBudget
from router.api.logprobs import CompletionLogprobs
from router.api.openai_schema import CompletionRequest, parse_completion
from router.api.sampling import check_model, value_of
from router.api.stream_choices import stream_choices
from router.api.streaming import Chunks, dumps, json_str
from router.errors import bad_request
from router.upstream.dispatch import EngineStreamError
from router.upstream.model_card import ModelCard


async def completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_completion)
    n = value_of(req.sampling, "n")
    ctx.limits.check_sequences(len(req.prompts), n)
    card = ctx.registry.resolve(req.model)
    prompts = await asyncio.gather(
        *(_token_ids(ctx, card, req.sampling, p, i) for i, p in enumerate(req.prompts))
    )
    longest = max(len(ids) for ids in prompts)
    sampling = ctx.limits.apply(req.sampling, longest, card.max_model_len, "prompt")
    sequences = len(prompts) * n

    def completion_len(prompt_len: int) -> int:  # at most: as asked, else as many as fit
        return sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len

    if not req.stream:
        ctx.limits.check_response(sequences, completion_len(min(len(ids) for ids in prompts)), sampling)
    tokens = n * sum(len(ids) + completion_len(len(ids)) for ids in prompts)
    with ctx.streams.hold(request.get(KEY_ID, ""), sequences, tokens):
        echoes = await _echo_texts(ctx, card, req, prompts) if req.echo else None
        gen = await Generation.open(
            ctx.dispatcher,
            card,
            "cmpl",
            prompts,
            sampling,
            started=request[STARTED],
            cache_salt=ctx.cache_salt(request, req.cache_salt),
            session_key=ctx.session_key(request, req.user),
        )
        try:
            if req.stream:
                return await _stream(request, req, gen, echoes)
            return web.json_response(await _collect(req, gen, echoes, ctx.limits.budget()), dumps=dumps)
        finally:
            gen.close()


async def _token_ids(ctx: RouterContext, card: ModelCard, sampling, prompt, i: int):
    """A prompt's token ids, checked against the model's context (before anything else is done with them:
    a prompt that cannot fit costs no more) and vocabulary."""
    if isinstance(prompt, str):
        tokenizer = ctx.tokenizers.for_model(card.name)
        ids = (await tokenizer.encode_text(prompt, max_tokens=card.max_model_len - 1)).token_ids
        if not ids:
            raise bad_request(f"'prompt' {i} encodes to no tokens.", "prompt")
    else:
        ids = prompt
    check_model(sampling, len(ids), card, "prompt")
    if not isinstance(prompt, str):
        top = max(ids)
        if top >= card.vocab_size:
            raise bad_request(
                f"'prompt' holds token id {top}, outside the vocabulary (size {card.vocab_size}).", "prompt"
            )
    return ids


async def _echo_texts(ctx: RouterContext, card: ModelCard, req: CompletionRequest, prompts) -> list[str]:
    """The prompts as text: as given, or decoded when given as token ids."""

    async def text(prompt: str | list[int], ids) -> str:
        return (
            prompt
            if isinstance(prompt, str)
            else await ctx.tokenizers.for_model(card.name).decode(
                ids, value_of(req.sampling, "skip_special_tokens")
            )
        )

    return list(await asyncio.gather(*(text(p, ids) for p, ids in zip(req.prompts, prompts, strict=True))))


def _choice_logprobs(req: CompletionRequest, gen: Generation) -> list[CompletionLogprobs] | None:
    if not req.sampling.HasField("logprobs"):
        return None
    return [CompletionLogprobs() for _ in range(gen.num_choices)]


async def _collect(
    req: CompletionRequest, gen: Generation, echoes: list[str] | None, budget: ResponseBudget
) -> dict:
    texts = [[echoes[i // gen.n]] if echoes else [] for i in range(gen.num_choices)]
    logprobs = _choice_logprobs(req, gen)
    finish: list[str | None] = [None] * gen.num_choices
    for echo in texts:
        budget.charge("".join(echo))
    try:
        async for i, msg in gen.messages():
            budget.charge(msg.text, msg.logprobs if logprobs else ())
            texts[i].append(msg.text)
            if logprobs:
                logprobs[i].add(msg.logprobs)
            if msg.finish_reason:
                finish[i] = FINISH_REASONS[msg.finish_reason]
    except EngineStreamError as err:
        raise err.error from None
    choices = [
        {
            "index": i,
            "text": "".join(texts[i]),
            "logprobs": logprobs[i].take() if logprobs else None,
            "finish_reason": finish[i],
        }
        for i in range(gen.num_choices)
    ]
    return {
        "id": gen.id,
        "object": "text_completion",
        "created": gen.created,
        "model": gen.model,
        "choices": choices,
        "usage": gen.usage,
    }


async def _stream(
    request: web.Request, req: CompletionRequest, gen: Generation, echoes: list[str] | None
) -> web.StreamResponse:
    chunks = Chunks(gen.id, "text_completion", gen.created, gen.model, req.include_usage)
    logprobs = _choice_logprobs(req, gen)
    opening = b""
    if echoes:
        opening = b"".join(chunks.choice(_choice(i, echoes[i // gen.n])) for i in range(gen.num_choices))

    def content(i: int, msg) -> str:
        lp = "null"
        if logprobs:
            logprobs[i].add(msg.logprobs)
            lp = dumps(logprobs[i].take())
        return _choice(i, msg.text, lp)

    return await stream_choices(
        request,
        gen,
        chunks,
        include_usage=req.include_usage,
        content=content,
        finish=lambda i, reason: _choice(i, "", "null", reason),
        opening=opening,
    )


def _choice(index: int, text: str, logprobs: str = "null", finish_reason: str = "null") -> str:
    return (
        f'{{"index":{index},"text":{json_str(text)},"logprobs":{logprobs},"finish_reason":{finish_reason}}}'
    )
