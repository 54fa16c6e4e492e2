"""The router's Prometheus metrics, in a registry of its own (so tests can run several routers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pagoda_router_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "pagoda_router_request_duration_seconds",
            "Time to the last byte of a generation request.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "pagoda_router_time_to_first_token_seconds",
            "From request arrival to the engine's first message.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("pagoda_router_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("pagoda_router_generation_tokens", "Tokens generated.", registry=r)
        self.engine_requests = Counter(
            "pagoda_router_engine_requests", "Requests sent to each engine.", ["engine"], registry=r
        )
        self.engine_retries = Counter(
            "pagoda_router_engine_retries", "Engine attempts that failed before the first token.", registry=r
        )
        self.stream_errors = Counter(
            "pagoda_router_stream_errors",
            "Streams ended by an engine failure after the first token.",
            registry=r,
        )
        self.client_disconnects = Counter(
            "pagoda_router_client_disconnects", "Requests whose client went away before the end.", registry=r
        )

    def watch_engines(self, engines_fn) -> None:
        """Reports each engine's state at scrape time; `engines_fn()` returns the registry's engines."""
        self.registry.register(_EngineCollector(engines_fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, engines_fn):
        self._engines_fn = engines_fn

    def describe(self):
        return []

    def collect(self):
        ready = GaugeMetricFamily(
            "pagoda_router_engine_ready", "1 while an engine takes requests.", labels=["engine", "model"]
        )
        outstanding = GaugeMetricFamily(
            "pagoda_router_engine_outstanding_requests",
            "This router's requests in flight per engine.",
            labels=["engine"],
        )
        load = GaugeMetricFamily(
            "pagoda_router_engine_load", "The load score routing compares.", labels=["engine"]
        )
        for e in self._engines_fn():
            ready.add_metric([e.address, e.card.name if e.card else ""], 1.0 if e.ready else 0.0)
            outstanding.add_metric([e.address], e.num_outstanding)
            load.add_metric([e.address], e.load)
        yield from (ready, outstanding, load)
