"""One HTTP request as logs, metrics and traces see it.

The middleware opens a `RequestTelemetry` for each request (its id: the client's `X-Request-Id` when valid,
else a new one, echoed in the response) and keeps it in a context variable while the handler runs. What
learns something about the request writes it there (Generation: the model, time to first token, tokens;
the dispatcher: the engine, retries), and the gRPC clients take their metadata from it: `x-request-id`
and, with tracing, the `traceparent` of a CLIENT span for the call. At the end the middleware logs one
line (`router.requests`) and ends the SERVER span. Probes and scrapes (/health, /metrics) are neither
logged nor traced. Prompt text is logged only with --log-prompts.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid

from aiohttp import web

from pagoda.telemetry.logging import (
    REQUEST_ID_KEY,
    fields,
    reset_request_context,
    set_request_context,
    valid_request_id,
)
from pagoda.telemetry.tracing import Tracing

log = logging.getLogger("router.requests")

QUIET_PATHS = frozenset({"/health", "/metrics"})  # probed every few seconds: not logged, not traced
MAX_LOGGED_PROMPT_CHARS = 4096

_CURRENT: contextvars.ContextVar[RequestTelemetry | None] = contextvars.ContextVar(
    "pagoda_router_request", default=None
)


def current() -> RequestTelemetry | None:
    """The request being handled in this task, if any (background probes have none)."""
    return _CURRENT.get()


def outgoing(method: str, peer: str) -> tuple[tuple[tuple[str, str], ...], ClientSpan | None]:
    """gRPC metadata for a call made on behalf of the current request, and the call's span (None without
    tracing or outside a request): `end()` it when the call is over."""
    tel = _CURRENT.get()
    return ((), None) if tel is None else tel.outgoing(method, peer)


class ClientSpan:
    """The CLIENT span of one gRPC call; its server's span is its child."""

    __slots__ = ("_tracing", "_span")

    def __init__(self, tracing: Tracing, span):
        self._tracing, self._span = tracing, span

    def end(self, error: str | None = None) -> None:
        if error is not None:
            self._tracing.fail(self._span, error)
        self._span.end()


class RequestTelemetry:
    __slots__ = (
        "request_id", "tracing", "span", "model", "prompt_tokens", "completion_tokens", "cached_tokens",
        "ttft_s", "engine", "num_retries", "_metadata", "_token",
    )  # fmt: skip

    def __init__(self, request_id: str, tracing: Tracing | None, span):
        self.request_id = request_id
        self.tracing, self.span = tracing, span
        self.model = ""  # the served model, once the request resolved one
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.ttft_s: float | None = None
        self.engine: str | None = None  # the engine that served it (the last one tried)
        self.num_retries = 0
        self._metadata = ((REQUEST_ID_KEY, request_id),)
        self._token = None

    def outgoing(self, method: str, peer: str):
        if self.tracing is None:
            return self._metadata, None
        span = self.tracing.start_span(
            method,
            kind=self.tracing.CLIENT,
            parent=self.span,
            attributes={"rpc.system": "grpc", "rpc.method": method, "server.address": peer},
        )
        return (*self._metadata, *self.tracing.headers(span)), ClientSpan(self.tracing, span)

    def retried(self, engine: str, error: str) -> None:
        self.num_retries += 1
        if self.span is not None:
            self.span.add_event("retry", attributes={"engine": engine, "error": error})


class RouterTelemetry:
    """The app's request logging and tracing settings; opens and closes each request's telemetry."""

    def __init__(self, tracing: Tracing | None, log_requests: bool = True, log_prompts: bool = False):
        self.tracing = tracing
        self.log_requests = log_requests
        self.log_prompts = log_prompts

    def begin(self, request: web.Request) -> RequestTelemetry:
        request_id = valid_request_id(request.headers.get(REQUEST_ID_KEY)) or uuid.uuid4().hex
        span = None
        if self.tracing is not None and request.path not in QUIET_PATHS:
            span = self.tracing.start_span(
                f"{request.method} {request.path}",
                kind=self.tracing.SERVER,
                carrier=request.headers,
                attributes={
                    "http.request.method": request.method,
                    "url.path": request.path,
                    "pagoda.request_id": request_id,
                },
            )
        tel = RequestTelemetry(request_id, self.tracing, span)
        trace_id = self.tracing.trace_id(span) if span is not None else None
        tel._token = (_CURRENT.set(tel), set_request_context(request_id, trace_id))
        return tel

    async def end(
        self, tel: RequestTelemetry, request: web.Request, route: str, status: int, elapsed_s: float
    ) -> None:
        try:
            if self.log_requests and request.path not in QUIET_PATHS:
                prompt = await _prompt_text(request) if self.log_prompts and status != 499 else None
                log.info(
                    f"{request.method} {route} {status}",
                    extra=fields(
                        status=status,
                        model=tel.model or None,
                        prompt_tokens=tel.prompt_tokens or None,
                        cached_tokens=tel.cached_tokens or None,
                        completion_tokens=tel.completion_tokens or None,
                        ttft_ms=None if tel.ttft_s is None else round(tel.ttft_s * 1e3, 2),
                        duration_ms=round(elapsed_s * 1e3, 2),
                        engine=tel.engine,
                        retries=tel.num_retries or None,
                        prompt=prompt,
                    ),
                )
            if tel.span is not None:
                self._end_span(tel, route, status)
        finally:
            current_token, log_token = tel._token
            _CURRENT.reset(current_token)
            reset_request_context(log_token)

    def _end_span(self, tel: RequestTelemetry, route: str, status: int) -> None:
        span = tel.span
        span.update_name(f"{span.name.split(' ', 1)[0]} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if tel.model:
            span.set_attribute("gen_ai.request.model", tel.model)
        if tel.engine:
            span.set_attribute("pagoda.engine", tel.engine)
        if tel.prompt_tokens or tel.completion_tokens:
            span.set_attribute("gen_ai.usage.input_tokens", tel.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", tel.completion_tokens)
        if status >= 500:
            self.tracing.fail(span, f"HTTP {status}")
        span.end()


async def _prompt_text(request: web.Request) -> str | None:
    """The messages or prompt of the request's body (already read by the handler), cut to a bounded size."""
    try:
        body = json.loads(await request.read())
    except Exception:  # no body, too large, not JSON: nothing to log
        return None
    if not isinstance(body, dict):
        return None
    value = body.get("messages", body.get("prompt"))
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:MAX_LOGGED_PROMPT_CHARS]
