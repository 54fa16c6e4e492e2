"""POST /v1/embeddings: OpenAI's shape, served by engines running an embedding model (their ModelInfo says
task embed), routed by model name like generation.

    input            a string, a list of strings, token ids, or a list of token-id lists (at most 2048)
    encoding_format  "float" (lists of numbers) or "base64" (little-endian float32 bytes, as OpenAI's)
    dimensions       Matryoshka models only: the leading dimensions, renormalised; a 400 otherwise
    user             accepted and ignored

Text goes to the engine as text: the engine tokenizes it with the embedding model's own tokenizer (the
tokenizer service serves the generation model's). A generation model here is a 400, as an embedding model
is on the generation routes.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass

from aiohttp import web

from pagoda.engine.v1 import engine_pb2
from router.api.context import CONTEXT
from router.api.request_body import read_request
from router.api.streaming import dumps
from router.api.validation import opt_int, opt_str, reject_unknown, token_ids
from router.errors import bad_request
from router.upstream.model_card import ModelCard

MAX_INPUTS = 2048
_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: tuple[str | list[int], ...]
    base64: bool
    dimensions: int | None


async def embeddings(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_request(request, parse_embeddings)
    card = ctx.registry.resolve(req.model)
    _check_model(card, req)
    pb_request = engine_pb2.EmbedRequest(
        request_id=f"embd-{uuid.uuid4().hex}", inputs=[_input(x, card) for x in req.inputs]
    )
    if req.dimensions is not None:
        pb_request.dimensions = req.dimensions
    response = await ctx.dispatcher.embed(card, pb_request)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(e.values, req.base64)}
        for i, e in enumerate(response.embeddings)
    ]
    usage = {"prompt_tokens": response.prompt_tokens, "total_tokens": response.prompt_tokens}
    body = {"object": "list", "data": data, "model": card.name, "usage": usage}
    return web.json_response(body, dumps=dumps)


def parse_embeddings(body: object) -> EmbeddingsRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    reject_unknown(body, _FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: the name of a served model (see GET /v1/models).", "model")
    encoding = opt_str(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"'encoding_format' must be float or base64, got {encoding!r}.", "encoding_format")
    opt_str(body, "user")
    return EmbeddingsRequest(
        model=model,
        inputs=_inputs(body.get("input")),
        base64=encoding == "base64",
        dimensions=opt_int(body, "dimensions", lo=1),
    )


def _inputs(value: object) -> tuple[str | list[int], ...]:
    """OpenAI's four input forms."""
    if isinstance(value, str):
        value = [value]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string, a list of strings, or (lists of) token ids.", "input")
    if len(value) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} inputs, got {len(value)}.", "input")
    out: list[str | list[int]] = []
    for i, x in enumerate(value):
        if isinstance(x, str):
            if not x:
                raise bad_request(f"'input[{i}]' must not be empty.", "input")
            out.append(x)
        else:
            out.append(token_ids(x, f"input[{i}]"))
    return tuple(out)


def _check_model(card: ModelCard, req: EmbeddingsRequest) -> None:
    if not card.is_embedding:
        raise bad_request(
            f"The model `{card.name}` is not an embedding model: /v1/embeddings needs one.", "model"
        )
    if req.dimensions is None:
        return
    if not card.matryoshka:
        raise bad_request(
            f"'dimensions' is not supported by `{card.name}`: its embeddings cannot be shortened "
            "(not a Matryoshka model).",
            "dimensions",
        )
    allowed = card.matryoshka_dimensions
    if (allowed and req.dimensions not in allowed) or req.dimensions > card.embedding_size:
        what = f"one of {list(allowed)}" if allowed else f"at most {card.embedding_size}"
        raise bad_request(f"'dimensions' must be {what}, got {req.dimensions}.", "dimensions")


def _input(x: str | list[int], card: ModelCard) -> engine_pb2.EmbedInput:
    if isinstance(x, str):
        return engine_pb2.EmbedInput(text=x)
    for t in x:
        if t >= card.vocab_size:
            raise bad_request(
                f"'input' holds token id {t}, outside the vocabulary (size {card.vocab_size}).", "input"
            )
    return engine_pb2.EmbedInput(token_ids=engine_pb2.TokenIds(ids=x))


def _encode(values, as_base64: bool):
    if not as_base64:
        return list(values)
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
