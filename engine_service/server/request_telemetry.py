"""One `Generate` call as logs and traces see it: its request id in every log line, one line when it ends,
and a SERVER span under the caller's trace with the request's life as events.

    with telemetry.generate(request_id, context.invocation_metadata()) as call:
        ...; call.stream = engine.add_request(...); ...

The line: `generate finished` with the request ids, gRPC status, finish reason, token counts and times
(queue, time to first token, end to end, in ms). The span's events carry the engine's own timestamps:
queued (in the engine loop), scheduled (first), first_token, finished. No prompt text is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from engine_service.server.errors import status_code
from pagoda.telemetry.logging import (
    fields,
    request_id_from_metadata,
    reset_request_context,
    set_request_context,
)
from pagoda.telemetry.tracing import Tracing

log = logging.getLogger("engine_service.requests")


class RequestTelemetry:
    def __init__(self, tracing: Tracing | None, log_requests: bool, model_name: str):
        self.tracing = tracing
        self.log_requests = log_requests
        self.model_name = model_name

    def generate(self, request_id: str, metadata) -> GenerateCall:
        return GenerateCall(self, request_id, metadata)


class GenerateCall:
    """A context manager around one Generate: the request id in the logs' context, the span, the end line."""

    __slots__ = ("_t", "request_id", "caller_id", "stream", "span", "_trace_id", "_token", "_started")

    def __init__(self, telemetry: RequestTelemetry, request_id: str, metadata):
        self._t = telemetry
        self.request_id = request_id
        self.caller_id = request_id_from_metadata(metadata)  # the router's id for the whole HTTP request
        self.stream = None  # the engine's RequestStream, once the request is accepted
        self._started = time.monotonic()
        tracing = telemetry.tracing
        self.span = None
        if tracing is not None:
            self.span = tracing.start_grpc_server_span(
                "EngineService/Generate",
                metadata,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": "pagoda.engine.v1.EngineService",
                    "rpc.method": "Generate",
                    "pagoda.request_id": request_id,
                    "gen_ai.request.model": telemetry.model_name,
                },
            )
        self._trace_id = tracing.trace_id(self.span) if tracing is not None else None
        self._token = None

    def __enter__(self) -> GenerateCall:
        self._token = set_request_context(self.caller_id or self.request_id, self._trace_id)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is None:
                status = "OK"
            elif isinstance(exc, asyncio.CancelledError):
                status = "CANCELLED"
            else:
                status = status_code(exc).name
            if self._t.log_requests:
                self._log(status, exc)
            if self.span is not None:
                self._end_span(status, exc)
        finally:
            reset_request_context(self._token)

    def _log(self, status: str, exc) -> None:
        s = self.stream
        usage = s.usage if s is not None else None
        log.info(
            "generate finished",
            extra=fields(
                engine_request_id=self.request_id if self.caller_id else None,
                status=status,
                error=str(exc) if exc is not None and status != "CANCELLED" else None,
                finish_reason=s.finish_reason if s is not None else None,
                prompt_tokens=usage.prompt_tokens if usage else (s.num_prompt_tokens if s else None),
                cached_tokens=usage.cached_prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                queue_ms=_ms(s.queued_time, s.first_scheduled_time) if s else None,
                ttft_ms=_ms(s.arrival_time, s.first_token_time) if s else None,
                e2e_ms=_ms(self._started, time.monotonic()),
            ),
        )

    def _end_span(self, status: str, exc) -> None:
        tracing, span, s = self._t.tracing, self.span, self.stream
        if s is not None:
            for name, t in (
                ("queued", s.queued_time),
                ("scheduled", s.first_scheduled_time),
                ("first_token", s.first_token_time),
                ("finished", s.finished_time),
            ):
                if t is not None:
                    span.add_event(name, timestamp=tracing.wall_ns(t))
            span.set_attribute("gen_ai.usage.input_tokens", s.num_prompt_tokens)
            if s.usage is not None:
                span.set_attribute("gen_ai.usage.output_tokens", s.usage.completion_tokens)
                span.set_attribute("pagoda.cached_tokens", s.usage.cached_prompt_tokens)
            if s.finish_reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [s.finish_reason])
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[status].value[0])
        if status not in ("OK", "CANCELLED"):
            tracing.fail(span, f"{status}: {exc}")
        span.end()


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1e3, 2)
