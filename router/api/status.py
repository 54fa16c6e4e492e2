"""The small GET routes: /v1/models, /health, /metrics, /version."""

from __future__ import annotations

import time

from aiohttp import web

from pagoda import __version__
from router.api.context import CONTEXT
from router.errors import model_not_found
from router.upstream.model_card import ModelCard

_STARTED = int(time.time())


def _model_object(card: ModelCard) -> dict:
    return {
        "id": card.name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "pagoda",
        "max_model_len": card.max_model_len,
    }


async def list_models(request: web.Request) -> web.Response:
    registry = request.app[CONTEXT].registry
    ready = {e.card.name for e in registry.engines if e.ready}
    cards = [c for name, c in sorted(registry.models().items()) if name in ready]
    return web.json_response({"object": "list", "data": [_model_object(c) for c in cards]})


async def get_model(request: web.Request) -> web.Response:
    card = request.app[CONTEXT].registry.models().get(request.match_info["model"])
    if card is None:
        raise model_not_found(request.match_info["model"])
    return web.json_response(_model_object(card))


async def health(request: web.Request) -> web.Response:
    engines = request.app[CONTEXT].registry.engines
    num_ready = sum(e.ready for e in engines)
    body = {
        "status": "ok" if num_ready else "unavailable",
        "engines_ready": num_ready,
        "engines": len(engines),
    }
    return web.json_response(body, status=200 if num_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """The router's metrics, then the engines' named by --engine-metrics-url (upstream/engine_metrics.py)."""
    ctx = request.app[CONTEXT]
    body = ctx.metrics.render() + await ctx.engine_metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})
