"""What every handler reaches through `request.app[CONTEXT]`: the router's long-lived parts."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from router.auth import ApiKeys
from router.config import RouterConfig
from router.dispatch import Dispatcher
from router.engines import EngineRegistry
from router.metrics import RouterMetrics
from router.tokenizer import TokenizerClient


@dataclass
class RouterContext:
    config: RouterConfig
    registry: EngineRegistry
    dispatcher: Dispatcher
    tokenizer: TokenizerClient
    metrics: RouterMetrics
    api_keys: ApiKeys

    def session_key(self, request: web.Request, *fallbacks: str | None) -> str | None:
        """The session policy's key: the session header, else the first body field given (`user`...)."""
        return request.headers.get(self.config.session_header) or next((f for f in fallbacks if f), None)


CONTEXT = web.AppKey("router", RouterContext)
STARTED = web.RequestKey("started", float)  # time.perf_counter() when the request arrived
