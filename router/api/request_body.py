"""A route's request: its body read, decoded and parsed on the event loop when small, in the body pool's
process when large (the reasons are in body.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from router.api.body import INLINE_BYTES, parse_json, read_bytes
from router.api.context import CONTEXT

T = TypeVar("T")


async def read_request(request: web.Request, parse: Callable[[object], T]) -> T:
    """The body read, decoded, parsed as JSON and handed to `parse` (a pure, module-level function such as
    openai_schema.parse_chat, so that it can run in the body pool's process too)."""
    ctx = request.app[CONTEXT]
    raw = await read_bytes(request, ctx.config.body_timeout_s)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if len(raw) <= INLINE_BYTES and encoding == "identity":
        return parse(parse_json(raw))
    return await ctx.body_pool.parse(parse, raw, encoding, request.client_max_size)
