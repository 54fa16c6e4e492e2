"""Prometheus metrics of the tokenizer service, on their own HTTP port."""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class TokenizerMetrics:
    def __init__(self) -> None:
        # A registry of our own, so that several servers (tests) can live in one process.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pagoda_tokenizer_requests",
            "RPCs handled, by method and status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pagoda_tokenizer_request_duration_seconds",
            "Time to handle one RPC.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "pagoda_tokenizer_requests_in_flight", "RPCs being handled now.", ["rpc"], registry=self.registry
        )
        self.tokens_encoded = Counter(
            "pagoda_tokenizer_encoded_tokens",
            "Tokens produced by Encode, by input kind.",
            ["input"],
            registry=self.registry,
        )
        self._http = None

    def started(self, rpc: str) -> float:
        self.in_flight.labels(rpc).inc()
        return time.perf_counter()

    def finished(self, rpc: str, code: grpc.StatusCode, started: float) -> None:
        self.latency.labels(rpc).observe(time.perf_counter() - started)
        self.requests.labels(rpc, code.name).inc()
        self.in_flight.labels(rpc).dec()

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint; returns its port (useful with port 0)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
