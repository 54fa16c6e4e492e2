"""What every handler reaches through `request.app[CONTEXT]`: the router's long-lived parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from router.api.auth import ApiKeys
from router.api.body_pool import BodyPool
from router.api.limits import RequestLimits, StreamLimiter
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.request_telemetry import RequestTelemetry, RouterTelemetry
from router.upstream.dispatch import Dispatcher
from router.upstream.engine_metrics import EngineMetrics
from router.upstream.engines import EngineRegistry
from router.upstream.tokenizer import Tokenizers


@dataclass
class RouterContext:
    config: RouterConfig
    registry: EngineRegistry
    dispatcher: Dispatcher
    tokenizers: Tokenizers  # each model's tokenizer client: tokenizers.for_model(card.name)
    metrics: RouterMetrics
    api_keys: ApiKeys
    limits: RequestLimits = field(default_factory=RequestLimits)
    streams: StreamLimiter = field(default_factory=lambda: StreamLimiter(None))
    telemetry: RouterTelemetry = field(default_factory=lambda: RouterTelemetry(None))
    body_pool: BodyPool = field(default_factory=BodyPool)
    engine_metrics: EngineMetrics = field(default_factory=lambda: EngineMetrics(()))

    def session_key(self, request: web.Request, *fallbacks: str | None) -> str | None:
        """The session policy's key: the session header, else the first body field given (`user`...)."""
        return request.headers.get(self.config.session_header) or next((f for f in fallbacks if f), None)

    def cache_salt(self, request: web.Request, requested: str) -> str:
        """The engine's prefix-cache salt: the request's own `cache_salt`, and with --salt-cache-per-api-key
        the caller's key id before it, so that no two keys ever share a cached block."""
        if not self.config.salt_cache_per_api_key:
            return requested
        return f"{request.get(KEY_ID, '')}:{requested}"


CONTEXT = web.AppKey("router", RouterContext)
STARTED = web.RequestKey("started", float)  # time.perf_counter() when the request arrived
KEY_ID = web.RequestKey("key_id", str)  # the caller's API key id ("" without API keys)
TELEMETRY = web.RequestKey("telemetry", RequestTelemetry)  # the request's id, span, and what its line logs
