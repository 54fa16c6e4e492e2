"""The router's Prometheus metrics (/metrics on the HTTP port), in a registry of its own (so that tests can
run several routers in one process). Latencies are as clients see them: from the request's arrival here.

    pagoda_router_requests_total{route, model, status}             HTTP requests answered (499: client left)
    pagoda_router_request_duration_seconds{route, model}           arrival to the last byte
    pagoda_router_time_to_first_token_seconds{model}               arrival to the engine's first message
    pagoda_router_prompt_tokens_total / _generation_tokens_total{model}
    pagoda_router_engine_retries_total{model}                      engine attempts failed before a first token
    pagoda_router_engine_picks_total{engine, policy}               every engine the policy picked
    pagoda_router_engine_requests_total{engine}                    streams an engine started
    pagoda_router_affinity_picks_total{policy, outcome}            hit: the key's own engine; spill: it was
                                                                   over the load bound; none: no key
    pagoda_router_engines_known / _engines_ready{model}            engines discovered / taking requests
    pagoda_router_engine_{ready, outstanding_requests, load}{engine}
    pagoda_router_engine_kv_cached_blocks{engine}                  blocks its KV events say it holds
                                                                   (kv_aware, while its stream is live)
    pagoda_router_stream_errors_total, _client_disconnects_total
    pagoda_router_event_loop_tasks                                 asyncio tasks alive (a leak grows it)

`model` is a model some engine serves ("" before the request's model is known, e.g. a 400), so its values
stay few whatever clients send.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pagoda_router_requests",
            "HTTP requests answered, by route, model and status (499: the client went away).",
            ["route", "model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "pagoda_router_request_duration_seconds",
            "From a request's arrival to its last byte.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "pagoda_router_time_to_first_token_seconds",
            "From a request's arrival to the engine's first message.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pagoda_router_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "pagoda_router_generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.engine_requests = Counter(
            "pagoda_router_engine_requests", "Streams started on each engine.", ["engine"], registry=r
        )
        self.engine_picks = Counter(
            "pagoda_router_engine_picks",
            "Engines picked by the routing policy (retries included).",
            ["engine", "policy"],
            registry=r,
        )
        self.engine_retries = Counter(
            "pagoda_router_engine_retries",
            "Engine attempts that failed before the first token (the request went on to another engine).",
            ["model"],
            registry=r,
        )
        self.stream_errors = Counter(
            "pagoda_router_stream_errors",
            "Streams ended by an engine failure after the first token.",
            registry=r,
        )
        self.client_disconnects = Counter(
            "pagoda_router_client_disconnects", "Requests whose client went away before the end.", registry=r
        )

    def watch_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reports how many asyncio tasks are alive on `loop` at scrape time."""
        Gauge(
            "pagoda_router_event_loop_tasks",
            "Asyncio tasks alive in the router's event loop (idle: discovery and probes; a leak grows it).",
            registry=self.registry,
        ).set_function(lambda: len(asyncio.all_tasks(loop)))

    def watch_engines(self, engines_fn: Callable[[], Iterable]) -> None:
        """Reports each engine's state at scrape time; `engines_fn()` returns the registry's engines."""
        self.registry.register(_EngineCollector(engines_fn))

    def watch_policy(self, policy) -> None:
        """Reports an affinity policy's pick outcomes (`policy.outcomes`) at scrape time."""
        if getattr(policy, "outcomes", None) is not None:
            self.registry.register(_PolicyCollector(policy))

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
        known_by_model = GaugeMetricFamily(
            "pagoda_router_engines_known",
            "Engines discovered, by the model they serve ('' until first probed).",
            labels=["model"],
        )
        ready_by_model = GaugeMetricFamily(
            "pagoda_router_engines_ready", "Engines taking requests, by model.", labels=["model"]
        )
        kv_blocks = GaugeMetricFamily(
            "pagoda_router_engine_kv_cached_blocks",
            "KV blocks an engine's KV-cache events say it holds (kv_aware; only while its stream is live).",
            labels=["engine"],
        )
        known, up = Tally(), Tally()
        for e in self._engines_fn():
            index = getattr(e, "kv_index", None)
            if index is not None and index.live:
                kv_blocks.add_metric([e.address], len(index))
            model = e.card.name if e.card else ""
            known[model] += 1
            up[model] += e.ready
            ready.add_metric([e.address, model], 1.0 if e.ready else 0.0)
            outstanding.add_metric([e.address], e.num_outstanding)
            load.add_metric([e.address], e.load)
        for model, count in known.items():
            known_by_model.add_metric([model], count)
            ready_by_model.add_metric([model], up[model])
        yield from (ready, outstanding, load, kv_blocks, known_by_model, ready_by_model)


class _PolicyCollector:
    def __init__(self, policy):
        self._policy = policy

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily(
            "pagoda_router_affinity_picks",
            "Affinity picks: hit (the key's own engine), spill (it was over the load bound), none (no key).",
            labels=["policy", "outcome"],
        )
        for outcome, count in list(self._policy.outcomes.items()):
            family.add_metric([self._policy.name, outcome], count)
        yield family
