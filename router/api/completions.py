"""POST /v1/completions: one or more prompts (text or token ids), `n` samples each, optional echo.

As OpenAI's legacy API: `echo` returns the prompt before the completion, and with `logprobs` the prompt's
own logprobs (the engine's prompt logprobs; the first token's are null); `max_tokens` 0 with echo returns
the prompt alone (the engine samples one token, which is dropped); `best_of` draws that many samples and
returns the n with the highest cumulative logprob (not streamed); `suffix` fills in the middle for models
whose tokenizer has FIM tokens (router/api/fim.py). vLLM's `prompt_logprobs` and `return_token_ids` add
their fields to each choice.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from pagoda.engine.v1 import engine_pb2
from router.api.context import CONTEXT, KEY_ID, STARTED, RouterContext
from router.api.fim import fim_prompt
from router.api.generation import FINISH_REASONS, Generation
from router.api.limits import ResponseBudget
from router.api.logprobs import CompletionLogprobs, cumulative_logprob, vllm_prompt_logprobs
from router.api.openai_schema import CompletionRequest, parse_completion
from router.api.request_body import read_request
from router.api.sampling import check_model, value_of
from router.api.stream_choices import stream_choices
from router.api.streaming import Chunks, dumps, json_str
from router.api.structured_outputs import client_error
from router.errors import OpenAIError, bad_request
from router.upstream.dispatch import EngineStreamError
from router.upstream.model_card import ModelCard


async def completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_completion)
    n = value_of(req.sampling, "n")  # the engine's samples per prompt (best_of when it is larger)
    ctx.limits.check_sequences(len(req.prompts), n)
    card = ctx.registry.resolve(req.model)
    prompts = await asyncio.gather(*(_token_ids(ctx, card, req, p, i) for i, p in enumerate(req.prompts)))
    longest = max(len(ids) for ids in prompts)
    sampling = req.sampling
    if req.default_max_tokens:  # OpenAI's default of 16, as much of it as fits
        sampling = engine_pb2.SamplingParams()
        sampling.CopyFrom(req.sampling)
        sampling.max_tokens = max(1, min(sampling.max_tokens, card.max_model_len - longest))
    for ids in prompts:
        check_model(sampling, len(ids), card, "prompt")
    sampling = ctx.limits.apply(sampling, longest, card.max_model_len, "prompt")
    sequences = len(prompts) * n

    def completion_len(prompt_len: int) -> int:  # at most: as asked, else as many as fit
        return sampling.max_tokens if sampling.HasField("max_tokens") else card.max_model_len - prompt_len

    if not req.stream:
        ctx.limits.check_response(sequences, completion_len(min(len(ids) for ids in prompts)), sampling)
    tokens = n * sum(len(ids) + completion_len(len(ids)) for ids in prompts)
    with ctx.streams.hold(request.get(KEY_ID, ""), sequences, tokens):
        echo = await _Echo.make(ctx, card, req, prompts) if req.echo else None
        try:
            gen = await Generation.open(
                ctx.dispatcher,
                card,
                "cmpl",
                prompts,
                sampling,
                started=request[STARTED],
                cache_salt=ctx.cache_salt(request, req.cache_salt),
                session_key=ctx.session_key(request, req.user),
                structured_output=req.constraint.pb if req.constraint else None,
            )
        except OpenAIError as err:
            raise client_error(err, req.constraint) from None
        gen.hide_completion = req.prompt_only
        try:
            if req.stream:
                return await _stream(request, req, gen, prompts, echo)
            body = await _collect(req, gen, prompts, echo, ctx.limits.budget())
            return web.json_response(body, dumps=dumps)
        finally:
            gen.close()


async def _token_ids(ctx: RouterContext, card: ModelCard, req: CompletionRequest, prompt, i: int):
    """A prompt's token ids, refused as soon as it cannot fit the context (a text prompt by the tokenizer,
    from its length in bytes where that tells) or names ids outside the vocabulary. The completion's
    length is checked once the default max_tokens is known (what fits of 16)."""
    if isinstance(prompt, str):
        tokenizer = ctx.tokenizers.for_model(card.name)
        text = await fim_prompt(tokenizer, prompt, req.suffix) if req.suffix else prompt
        limit = None if req.truncation else card.max_model_len - 1  # truncated: the tokenizer's ceiling
        ids = (await tokenizer.encode_text(text, max_tokens=limit)).token_ids
        if not ids:
            raise bad_request(f"'prompt' {i} encodes to no tokens.", "prompt")
        return req.truncation.apply(ids, card.max_model_len) if req.truncation else ids
    if req.suffix:
        raise bad_request("'suffix' needs text prompts (the gap's tokens are the model's own).", "suffix")
    if req.truncation is not None:
        prompt = list(req.truncation.apply(prompt, card.max_model_len))
    check_model(_PROMPT_ONLY, len(prompt), card, "prompt")
    top = max(prompt)
    if top >= card.vocab_size:
        raise bad_request(
            f"'prompt' holds token id {top}, outside the vocabulary (size {card.vocab_size}).", "prompt"
        )
    return prompt


_PROMPT_ONLY = engine_pb2.SamplingParams()  # check_model's context check of a prompt alone


class _Echo:
    """Each prompt as echoed: its text (as given, or decoded from token ids, special tokens kept: as vLLM),
    and with logprobs the text of its first token on its own (the engine's prompt logprobs start at the
    second)."""

    def __init__(self, texts: list[str], first_tokens: list[str] | None, first_ids: list[int]):
        self.texts = texts
        self.first_tokens = first_tokens
        self.first_ids = first_ids

    @classmethod
    async def make(cls, ctx: RouterContext, card: ModelCard, req: CompletionRequest, prompts) -> _Echo:
        tokenizer = ctx.tokenizers.for_model(card.name)

        async def text(prompt: str | list[int], ids) -> str:
            if isinstance(prompt, str) and req.truncation is None:
                return prompt
            return await tokenizer.decode(ids, False)  # the prompt as it was, its special tokens too

        texts = asyncio.gather(*(text(p, ids) for p, ids in zip(req.prompts, prompts, strict=True)))
        first_ids = [ids[0] for ids in prompts]
        if req.logprobs is None:
            return cls(list(await texts), None, first_ids)
        firsts = asyncio.gather(*(tokenizer.decode(ids[:1], False) for ids in prompts))
        texts_done, firsts_done = await asyncio.gather(texts, firsts)
        return cls(list(texts_done), list(firsts_done), first_ids)

    def logprobs(self, prompt: int, num_top: int, positions, as_ids: bool) -> CompletionLogprobs:
        lp = CompletionLogprobs(num_top, as_ids=as_ids)
        lp.add_prompt(self.first_tokens[prompt], self.first_ids[prompt], positions)
        return lp


class _Sample:
    """What one engine sample produced, gathered for the response."""

    __slots__ = ("texts", "token_ids", "positions", "finish_reason")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.positions: list[engine_pb2.PositionLogprobs] = []
        self.finish_reason: str | None = None


async def _collect(
    req: CompletionRequest, gen: Generation, prompts, echo: _Echo | None, budget: ResponseBudget
) -> dict:
    samples = [_Sample() for _ in range(gen.num_choices)]  # best_of per prompt
    prompt_positions: dict[int, list] = {}  # prompt index -> the engine's prompt logprobs
    if echo:
        budget.charge("".join(echo.texts) * req.n)
    try:
        async for i, msg in gen.messages():
            budget.charge(msg.text, msg.logprobs)  # logprobs come only when asked for (or for best_of)
            budget.charge("", msg.prompt_logprobs)
            s = samples[i]
            s.texts.append(msg.text)
            s.token_ids += msg.token_ids
            s.positions += msg.logprobs
            if msg.prompt_logprobs:
                prompt_positions[i // gen.n] = list(msg.prompt_logprobs)
            if msg.finish_reason:
                s.finish_reason = FINISH_REASONS[msg.finish_reason]
    except EngineStreamError as err:
        raise err.error from None
    choices = []
    for p, ids in enumerate(prompts):
        positions = None
        if req.sampling.HasField("prompt_logprobs"):
            positions = prompt_positions.get(p, [])
            if len(positions) != len(ids) - 1:  # never a silently short list
                raise OpenAIError(502, "The engine sent no prompt logprobs.", type="server_error")
        for j, s in enumerate(_best(samples[p * gen.n : (p + 1) * gen.n], req.n)):
            choices.append(_choice_body(req, p * req.n + j, p, ids, s, echo, positions))
    return {
        "id": gen.id,
        "object": "text_completion",
        "created": gen.created,
        "model": gen.model,
        "choices": choices,
        "usage": gen.usage,
    }


def _best(samples: list[_Sample], n: int) -> list[_Sample]:
    """best_of: the n samples with the highest cumulative logprob, best first (all of them when n fit)."""
    if len(samples) == n:
        return samples
    return sorted(samples, key=lambda s: cumulative_logprob(s.positions), reverse=True)[:n]


def _choice_body(
    req: CompletionRequest, index: int, prompt: int, ids, s: _Sample, echo: _Echo | None, positions
) -> dict:
    text = "" if req.prompt_only else "".join(s.texts)
    logprobs = None
    if req.logprobs is not None:
        logprobs = CompletionLogprobs(req.logprobs, as_ids=req.tokens_as_ids)
        if echo:
            logprobs = echo.logprobs(prompt, req.logprobs, positions, req.tokens_as_ids)
        if not req.prompt_only:
            logprobs.add(s.positions)
    body = {
        "index": index,
        "text": echo.texts[prompt] + text if echo else text,
        "logprobs": None if logprobs is None else _logprobs_body(logprobs),
        "finish_reason": "length" if req.prompt_only else s.finish_reason,
    }
    if req.prompt_logprobs is not None:
        body["prompt_logprobs"] = vllm_prompt_logprobs(positions, req.prompt_logprobs)
    if req.return_token_ids:
        body["prompt_token_ids"] = list(ids)
        body["token_ids"] = [] if req.prompt_only else s.token_ids
    return body


def _logprobs_body(lp: CompletionLogprobs) -> dict:
    return {
        "text_offset": lp.text_offset,
        "token_logprobs": lp.token_logprobs,
        "tokens": lp.tokens,
        "top_logprobs": lp.top_logprobs,
    }


async def _stream(
    request: web.Request, req: CompletionRequest, gen: Generation, prompts, echo: _Echo | None
) -> web.StreamResponse:
    chunks = Chunks(gen.id, "text_completion", gen.created, gen.model, req.include_usage)
    num_top = req.logprobs
    logprobs = None
    if num_top is not None:
        logprobs = [CompletionLogprobs(num_top, as_ids=req.tokens_as_ids) for _ in range(gen.num_choices)]
    opening = b""
    if echo:  # each choice opens with its prompt; its logprobs came on the prompt's first message
        for i in range(gen.num_choices):
            p = i // gen.n
            lp = "null"
            if logprobs is not None:
                positions = _prompt_positions(gen.streams[p].first)
                logprobs[i] = echo.logprobs(p, num_top, positions, req.tokens_as_ids)
                lp = dumps(_logprobs_body(logprobs[i]))
                logprobs[i] = _continue(logprobs[i])
            opening += chunks.choice(_choice(i, echo.texts[p], lp, extra=_prompt_ids(req, prompts[p])))
    first = [not echo] * gen.num_choices  # whether the choice's prompt ids are still to be sent

    def content(i: int, msg, finish_reason: str) -> str | None:
        if req.prompt_only:
            return None
        lp = "null"
        if logprobs is not None:
            logprobs[i].add(msg.logprobs)
            lp = dumps(_logprobs_body(logprobs[i]))
            logprobs[i] = _continue(logprobs[i])
        extra = ""
        if req.return_token_ids:
            extra = _prompt_ids(req, prompts[i // gen.n]) if first[i] else ""
            extra += f',"token_ids":{dumps(list(msg.token_ids))}'
        first[i] = False
        return _choice(i, msg.text, lp, finish_reason, extra=extra)

    return await stream_choices(
        request,
        gen,
        chunks,
        include_usage=req.include_usage,
        content=content,
        finish=lambda i, reason: _choice(i, "", "null", '"length"' if req.prompt_only else reason),
        opening=opening,
        prompt_tokens=[len(ids) for ids in prompts] if req.continuous_usage else None,
        finish_with_content=True,
    )


def _prompt_positions(msg: engine_pb2.GenerateResponse | None) -> list:
    if msg is None or not msg.prompt_logprobs:  # the engine sends them on the request's first message
        raise OpenAIError(502, "The engine sent no prompt logprobs.", type="server_error")
    return list(msg.prompt_logprobs)


def _continue(lp: CompletionLogprobs) -> CompletionLogprobs:
    """A fresh list for the next chunk, at the offset where `lp` ended."""
    return CompletionLogprobs(lp.num_top, lp.offset, lp.as_ids)


def _prompt_ids(req: CompletionRequest, ids) -> str:
    return f',"prompt_token_ids":{dumps(list(ids))}' if req.return_token_ids else ""


def _choice(
    index: int, text: str, logprobs: str = "null", finish_reason: str = "null", extra: str = ""
) -> str:
    return (
        f'{{"index":{index},"text":{json_str(text)},"logprobs":{logprobs},"finish_reason":{finish_reason}'
        f"{extra}}}"
    )
