"""Prometheus metrics on --metrics-port, read from the latest engine stats when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from engine_service.servicer import ServingState


class EngineCollector:
    def __init__(self, state: ServingState, model_name: str):
        self._state = state
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        engine = self._state.engine
        ready = engine is not None and engine.error is None and not self._state.draining
        yield self._gauge(
            "pagoda_engine_ready", "1 when the engine serves requests (loaded, not draining)", ready
        )
        yield self._gauge(
            "pagoda_engine_draining", "1 once the engine stopped taking requests", self._state.draining
        )
        if engine is None:
            return
        s = engine.stats
        yield self._gauge("pagoda_engine_requests_running", "Requests in the running batch", s.num_running)
        yield self._gauge(
            "pagoda_engine_requests_waiting", "Requests queued, not yet scheduled", s.num_waiting
        )
        yield self._gauge(
            "pagoda_engine_kv_cache_usage", "Share of KV-cache blocks in use (0..1)", s.kv_cache_usage
        )
        yield self._gauge(
            "pagoda_engine_prefix_cache_hit_rate",
            "Share of prompt tokens found in the prefix cache (0..1)",
            s.prefix_cache_hit_rate,
        )
        yield self._gauge(
            "pagoda_engine_generation_tokens_per_second",
            "Generated tokens per second, last 5 s",
            engine.meter.rate(),
        )
        yield self._counter("pagoda_engine_prompt_tokens", "Prompt tokens computed", s.num_prompt_tokens)
        yield self._counter("pagoda_engine_generation_tokens", "Tokens generated", s.num_generation_tokens)
        yield self._counter(
            "pagoda_engine_preemptions", "Sequences preempted for lack of KV blocks", s.num_preemptions
        )

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model"])
        g.add_metric([self._model], float(value))
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=["model"])
        c.add_metric([self._model], float(value))
        return c


def start_metrics_server(host: str, port: int, state: ServingState, model_name: str):
    """Serves /metrics in a background thread; returns the HTTP server (call .shutdown() to stop)."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(state, model_name))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
