"""POST /tokenize and POST /detokenize (as vLLM and SGLang serve them), through the tokenizer service."""

from __future__ import annotations

from aiohttp import web

from router.api.context import CONTEXT
from router.api.openai_schema import parse_detokenize, parse_tokenize
from router.api.request_body import read_request
from router.api.streaming import dumps
from router.errors import bad_request


async def tokenize(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_tokenize)
    card = ctx.registry.resolve(req.model)
    tokenizer = ctx.tokenizers.for_model(card.name)
    # The same limit as generation (the model's context), so counting a prompt costs no more than using it.
    if req.prompt is not None:
        encoded = await tokenizer.encode_text(
            req.prompt, req.add_special_tokens, card.max_model_len, return_token_strs=req.return_token_strs
        )
    else:
        encoded = await tokenizer.encode_chat(
            req.messages,
            add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
            continue_final_message=req.continue_final_message,
            chat_template_kwargs_json=req.chat_template_kwargs_json,
            tools_json=req.tools_json,
            max_tokens=card.max_model_len,
            return_token_strs=req.return_token_strs,
        )
    tokens = list(encoded.token_ids)
    body = {
        "count": len(tokens),
        "max_model_len": card.max_model_len,
        "tokens": tokens,
        # vLLM's: each token's vocabulary string when asked (return_token_strs), else null.
        "token_strs": list(encoded.token_strs) if req.return_token_strs else None,
    }
    return web.json_response(body, dumps=dumps)


async def detokenize(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    model, tokens = await read_request(request, parse_detokenize)
    card = ctx.registry.resolve(model)
    if len(tokens) > card.max_model_len:
        raise bad_request(
            f"'tokens' holds {len(tokens)} ids; this model's context is {card.max_model_len}.", "tokens"
        )
    if max(tokens) >= card.vocab_size:
        raise bad_request(f"'tokens' holds ids outside the vocabulary (size {card.vocab_size}).", "tokens")
    text = await ctx.tokenizers.for_model(card.name).decode(tokens)
    return web.json_response({"prompt": text}, dumps=dumps)
