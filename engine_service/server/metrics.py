"""The engine's Prometheus metrics on --metrics-port, named like vLLM's (`pagoda:` for `vllm:`) so that
dashboards and autoscaling rules written for vLLM carry over by renaming the prefix.

Where each number comes from, and what it costs:

    gauges, token and cache counters   the engine's latest stats snapshot (one per step, already sent to
                                       the front), read when Prometheus scrapes: nothing per step
    TTFT, e2e, request_success,        the front, once per request: at its first token and at its end
    request token histograms
    queue and prefill times            the engine loop's timestamps, sent once per request (StepTimes)
    inter-token latency,               the front, once per step: every token sampled for a sequence that
    iteration tokens                   already had one waited one step interval (an observation with a count)

Counters start after the warm-up request, so they count exactly the requests served. With the metrics port
off the front observes nothing (AsyncEngine.metrics is None).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from engine_service.engine.engine import EngineStats
from engine_service.engine.engine_loop import StepTimes
from engine_service.server.serving_state import ServingState
from pagoda.telemetry.histogram import Histogram

# Bucket bounds: vLLM's, with finer low ends (a GPU decodes in milliseconds; CPU tests take longer).
# fmt: off
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)
# fmt: on
FINISH_REASONS = ("stop", "length", "abort")
N_BUCKETS = (1, 2, 5, 10, 20)  # vLLM's request_params_n buckets


def buckets_1_2_5(limit: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit` (vLLM's token-count buckets)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


def iteration_buckets(max_num_batched_tokens: int) -> tuple[int, ...]:
    """1, 8, 16, 32, ... up to the step's token budget."""
    out, b = [1], 8
    while b < max_num_batched_tokens:
        out.append(b)
        b *= 2
    return (*out, max_num_batched_tokens) if max_num_batched_tokens > 1 else (1,)


class EngineMetrics:
    """What the asyncio front observes, per request and per step (see the module's table). One thread
    observes (the event loop); the metrics server reads at scrape time."""

    def __init__(self, baseline: EngineStats, max_model_len: int, max_num_batched_tokens: int):
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue = Histogram(REQUEST_LATENCY_BUCKETS)
        self.prefill = Histogram(REQUEST_LATENCY_BUCKETS)
        self.decode = Histogram(REQUEST_LATENCY_BUCKETS)
        self.inference = Histogram(REQUEST_LATENCY_BUCKETS)
        tokens = buckets_1_2_5(max_model_len)
        self.request_prompt_tokens = Histogram(tokens)
        self.request_generation_tokens = Histogram(tokens)
        self.iteration_tokens = Histogram(iteration_buckets(max_num_batched_tokens))
        self.request_params_n = Histogram(N_BUCKETS)
        self.request_params_max_tokens = Histogram(tokens)
        self.num_prompt_tokens = 0  # of requests that got their first token (as vLLM counts them)
        self.num_finished = dict.fromkeys(FINISH_REASONS, 0)
        self._num_computed = baseline.num_prompt_tokens + baseline.num_generation_tokens
        self._last_sample_time: float | None = None  # the last step that sampled anything

    # ---- per request -----------------------------------------------------------------------------------
    def started(self, queued: float, scheduled: float, first_token: float) -> None:
        """A sequence's first token, with the engine loop's times."""
        self.queue.observe(scheduled - queued)
        self.prefill.observe(first_token - scheduled)

    def first_token(self, stream) -> None:
        self.ttft.observe(stream.first_token_time - stream.arrival_time)
        self.num_prompt_tokens += stream.num_prompt_tokens

    def finished(self, stream) -> None:
        """The request's last delta (with usage) was delivered; `stream` holds its times."""
        end = stream.finished_time
        self.e2e.observe(end - stream.arrival_time)
        if stream.first_token_time is not None:
            self.decode.observe(end - stream.first_token_time)
        if stream.first_scheduled_time is not None:
            self.inference.observe(end - stream.first_scheduled_time)
        reason = stream.finish_reason if stream.finish_reason in self.num_finished else "abort"
        self.num_finished[reason] += 1
        self.request_params_n.observe(stream.num_sequences)
        self.request_params_max_tokens.observe(stream.params_max_tokens)
        usage = stream.usage
        if usage is not None:
            self.request_prompt_tokens.observe(usage.prompt_tokens)
            self.request_generation_tokens.observe(usage.completion_tokens)

    # ---- per step --------------------------------------------------------------------------------------
    def step(self, stats: EngineStats, times: StepTimes, num_sampled: int) -> None:
        computed = stats.num_prompt_tokens + stats.num_generation_tokens
        if computed != self._num_computed:
            self.iteration_tokens.observe(computed - self._num_computed)
            self._num_computed = computed
        if not num_sampled:
            return
        # Each token sampled for a sequence that already had one came one step interval after its previous
        # token (decodes are scheduled every step; a decode starved of budget is counted one interval short).
        decodes = num_sampled - len(times.started)
        if decodes > 0 and self._last_sample_time is not None:
            self.itl.observe(times.time - self._last_sample_time, decodes)
        self._last_sample_time = times.time


class EngineCollector:
    """Builds every family at scrape time from the serving state (see the module docstring)."""

    def __init__(self, state: ServingState, model_name: str, cache_config: dict[str, str]):
        self._state = state
        self._model = model_name
        self._cache_config = cache_config  # fixed labels of cache_config_info (enable_prefix_caching, ...)

    def describe(self) -> list:
        return []  # families appear once the engine has loaded; no up-front description

    def collect(self) -> Iterator[Metric]:
        state, engine = self._state, self._state.engine
        ready = engine is not None and engine.error is None and not state.draining
        yield self._gauge(
            "pagoda:engine_ready", "1 when the engine serves requests (loaded, not draining).", ready
        )
        yield self._gauge(
            "pagoda:engine_draining", "1 once the engine stopped taking requests.", state.draining
        )
        if engine is None:
            return
        mi = engine.model_info
        config = {
            "block_size": str(mi.block_size),
            "num_gpu_blocks": str(mi.num_kv_blocks),
            "cache_dtype": mi.dtype,
            **self._cache_config,
        }
        info = GaugeMetricFamily(
            "pagoda:cache_config_info",
            "The KV cache's configuration (labels); value 1.",
            labels=["model_name", *config],
        )
        info.add_metric([self._model, *config.values()], 1.0)
        yield info
        s = engine.stats
        yield self._gauge("pagoda:num_requests_running", "Requests in the running batch.", s.num_running)
        yield self._gauge("pagoda:num_requests_waiting", "Requests queued, not yet scheduled.", s.num_waiting)
        by_reason = GaugeMetricFamily(
            "pagoda:num_requests_waiting_by_reason",
            "Requests waiting, by reason: capacity (KV blocks, batch slots, the step's token budget) or "
            "deferred (waiting on something else; none in this engine yet).",
            labels=["model_name", "reason"],
        )
        by_reason.add_metric([self._model, "capacity"], float(s.num_waiting))
        by_reason.add_metric([self._model, "deferred"], 0.0)
        yield by_reason
        yield self._gauge(
            "pagoda:kv_cache_usage_perc", "Share of KV-cache blocks in use (1 = full).", s.kv_cache_usage
        )
        base = engine.initial_stats
        yield self._counter(
            "pagoda:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s.num_prefix_query_tokens - base.num_prefix_query_tokens,
        )
        yield self._counter(
            "pagoda:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.num_prefix_hit_tokens - base.num_prefix_hit_tokens,
        )
        yield self._counter(
            "pagoda:num_preemptions",
            "Sequences preempted (blocks freed, recomputed later) for lack of KV blocks.",
            s.num_preemptions - base.num_preemptions,
        )
        yield self._counter(
            "pagoda:generation_tokens",
            "Tokens generated.",
            s.num_generation_tokens - base.num_generation_tokens,
        )
        m = engine.metrics
        if m is None:  # the front observes nothing per request: --metrics-port 0
            return
        yield self._counter(
            "pagoda:prompt_tokens", "Prompt tokens of requests that had a first token.", m.num_prompt_tokens
        )
        success = CounterMetricFamily(
            "pagoda:request_success",
            "Requests finished, by finish reason (stop, length, abort).",
            labels=["model_name", "finished_reason"],
        )
        for reason, count in list(m.num_finished.items()):
            success.add_metric([self._model, reason], count)
        yield success
        for name, doc, histogram in (
            ("time_to_first_token_seconds", "From arrival to the first token.", m.ttft),
            ("inter_token_latency_seconds", "Between two tokens of one sequence.", m.itl),
            ("e2e_request_latency_seconds", "From arrival to the last token.", m.e2e),
            ("request_queue_time_seconds", "Waiting in the queue, before first scheduled.", m.queue),
            ("request_prefill_time_seconds", "From first scheduled to the first token.", m.prefill),
            ("request_decode_time_seconds", "From the first token to the last.", m.decode),
            ("request_inference_time_seconds", "From first scheduled to the last token.", m.inference),
            ("request_prompt_tokens", "Prompt tokens per request.", m.request_prompt_tokens),
            (
                "request_generation_tokens",
                "Generated tokens per request (all its samples).",
                m.request_generation_tokens,
            ),
            (
                "iteration_tokens",
                "Tokens computed per engine step (prompt chunks + decodes).",
                m.iteration_tokens,
            ),
            ("request_params_n", "The n (samples) of each finished request.", m.request_params_n),
            (
                "request_params_max_tokens",
                "The max_tokens of each finished request (what fits in the context when unset).",
                m.request_params_max_tokens,
            ),
        ):
            family = HistogramMetricFamily(f"pagoda:{name}", doc, labels=["model_name"])
            histogram.add_to(family, [self._model])
            yield family

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self._model], float(value))
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=["model_name"])
        c.add_metric([self._model], float(value))
        return c


def start_metrics_server(
    host: str, port: int, state: ServingState, model_name: str, cache_config: dict[str, str] | None = None
):
    """Serves /metrics from a background thread; returns the HTTP server (.server_port, .shutdown())."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(state, model_name, cache_config or {}))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
