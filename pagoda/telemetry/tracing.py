"""Traces: W3C trace context in from HTTP headers or gRPC metadata, out in gRPC metadata; OTLP/gRPC export.

    router   SERVER  "POST /v1/chat/completions"   (context from the client's `traceparent`, or a new trace)
               CLIENT  "TokenizerService/Encode"  ──metadata──▶  tokenizer  SERVER "TokenizerService/Encode"
               CLIENT  "EngineService/Generate"   ──metadata──▶  engine     SERVER "EngineService/Generate"
                                                                   events: queued, scheduled, first_token,
                                                                   finished; token counts as attributes

Tracing is on when an endpoint is given (`--otlp-endpoint`, else the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, read once in each service's main()).
Off, a service holds `None` instead of a `Tracing` and never imports OpenTelemetry, so it costs nothing.
On, spans leave in batches from a background thread (OTEL_BSP_* tune the batching); `shutdown()` sends
what is left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

INSTALL_HINT = (
    "tracing (--otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT) needs the OpenTelemetry SDK and its OTLP/gRPC "
    "exporter: pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc (or pagoda[otel])"
)


class TracingUnavailable(RuntimeError):
    """An endpoint was given, but the OpenTelemetry SDK is not installed."""


def otlp_endpoint(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/gRPC endpoint to export to: the flag, else the standard variables; None: tracing off."""
    for value in (
        flag,
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ):
        if value:
            return value
    return None


class Tracing:
    """One service's tracer, exporter and W3C propagator."""

    def __init__(self, service_name: str, endpoint: str):
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as e:
            raise TracingUnavailable(f"{INSTALL_HINT} ({e})") from None
        # OTEL_SERVICE_NAME (set by the chart) wins over our default name.
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service_name}))
        if "://" not in endpoint:  # host:port means plain gRPC, as collectors listen by default
            endpoint = f"http://{endpoint}"
        self.endpoint = endpoint
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("pagoda")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self.SERVER, self.CLIENT = SpanKind.SERVER, SpanKind.CLIENT
        self._error = lambda message: Status(StatusCode.ERROR, message)
        # Engine timestamps are time.monotonic(); spans want wall-clock nanoseconds.
        self._wall_offset_s = time.time() - time.monotonic()

    # ---- spans -------------------------------------------------------------------------------------------
    def start_span(
        self,
        name: str,
        *,
        kind,
        carrier: Mapping[str, str] | None = None,
        parent=None,
        attributes: Mapping[str, Any] | None = None,
        start_monotonic: float | None = None,
    ):
        """A span under `parent` (a span), else under the context in `carrier` (headers), else a new trace."""
        if parent is not None:
            context = self._trace.set_span_in_context(parent)
        else:
            context = self._propagator.extract(carrier) if carrier else None
        start = None if start_monotonic is None else self.wall_ns(start_monotonic)
        return self._tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start
        )

    def start_grpc_server_span(self, name: str, metadata: Iterable | None, **kw):
        """A SERVER span under the trace context in gRPC invocation metadata."""
        carrier = {k: v for k, v in metadata or () if k in ("traceparent", "tracestate")}
        return self.start_span(name, kind=self.SERVER, carrier=carrier, **kw)

    def fail(self, span, message: str) -> None:
        span.set_status(self._error(message))

    def wall_ns(self, monotonic_s: float) -> int:
        return int((monotonic_s + self._wall_offset_s) * 1e9)

    # ---- propagation -------------------------------------------------------------------------------------
    def headers(self, span) -> list[tuple[str, str]]:
        """`traceparent` (and `tracestate`) naming `span` as the parent, as gRPC metadata pairs."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return list(carrier.items())

    @staticmethod
    def trace_id(span) -> str:
        return format(span.get_span_context().trace_id, "032x")

    def shutdown(self) -> None:
        """Exports the spans still queued (blocks up to the exporter's timeout)."""
        self._provider.shutdown()


def setup_tracing(service_name: str, endpoint: str | None) -> Tracing | None:
    """A Tracing when an endpoint is given, else None (and OpenTelemetry is never imported)."""
    return Tracing(service_name, endpoint) if endpoint else None
