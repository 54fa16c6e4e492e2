"""A small OTLP/gRPC trace receiver (the collector's TraceService): the far end of `--otlp-endpoint` in tests
and benchmarks.

    receiver = TraceReceiver().start()            # 127.0.0.1, a free port: receiver.endpoint
    ...                                           # services export to it
    receiver.spans                                # every span received, flattened (FlatSpan)
    receiver.stop()

    python -m pagoda.telemetry.receiver --port 4317   # keeps only a count; prints it on SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc

try:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        f"the trace receiver needs opentelemetry-proto: pip install opentelemetry-proto ({e})"
    ) from e


@dataclass(frozen=True)
class FlatSpan:
    """One received span with its service name and ids as hex."""

    service: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 SERVER, 3 CLIENT
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict = field(hash=False)
    events: tuple[tuple[str, int, dict], ...] = field(hash=False)  # (name, time_ns, attributes)
    status_code: int = 0  # 0 unset, 1 ok, 2 error


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[FlatSpan]:
    spans = []
    for rs in request.resource_spans:
        service = str(_attrs(rs.resource.attributes).get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    FlatSpan(
                        service=service,
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes),
                        events=tuple((e.name, e.time_unix_nano, _attrs(e.attributes)) for e in s.events),
                        status_code=s.status.code,
                    )
                )
    return spans


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True):
        self.host, self.port = host, port
        self.keep = keep  # False: count spans only (benchmarks)
        self.spans: list[FlatSpan] = []
        self.num_spans = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def Export(self, request, context):
        spans = flatten(request) if self.keep else None
        with self._lock:
            if spans is not None:
                self.spans.extend(spans)
                self.num_spans += len(spans)
            else:
                self.num_spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> TraceReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    def snapshot(self) -> list[FlatSpan]:
        with self._lock:
            return list(self.spans)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pagoda.telemetry.receiver", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4317)
    args = p.parse_args(argv)
    receiver = TraceReceiver(args.host, args.port, keep=False).start()
    print(f"receiving OTLP traces on {receiver.endpoint}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    receiver.stop()
    print(f"spans received: {receiver.num_spans}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
