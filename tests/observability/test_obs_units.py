"""The shared telemetry pieces on their own: the weighted histogram, the log formats and request ids, the
OTLP endpoint's precedence, tracing that costs nothing (not even an import) when off and fails clearly
when asked for without the SDK, and the engine's stats line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
from prometheus_client.core import HistogramMetricFamily

from engine_service.engine.engine import EngineStats
from engine_service.server.stats_logger import stats_line
from pagoda.telemetry.histogram import Histogram
from pagoda.telemetry.logging import (
    JsonFormatter,
    TextFormatter,
    _RequestIds,
    fields,
    request_context,
    request_id_from_metadata,
    valid_request_id,
)
from pagoda.telemetry.tracing import otlp_endpoint


def test_histogram_takes_counted_observations_with_inclusive_bounds():
    h = Histogram((0.1, 1.0))
    h.observe(0.1)  # on the bound: in the 0.1 bucket (Prometheus buckets are <=)
    h.observe(0.5, count=3)
    h.observe(7.0)
    family = HistogramMetricFamily("x", "doc", labels=["m"])
    h.add_to(family, ["a"])
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_bucket", "0.1")] == 1 and samples[("x_bucket", "1.0")] == 4
    assert samples[("x_bucket", "+Inf")] == samples[("x_count", None)] == 5 == h.count
    assert samples[("x_sum", None)] == pytest.approx(0.1 + 1.5 + 7.0)
    with pytest.raises(ValueError, match="increase strictly"):
        Histogram((1.0, 0.5))


def _log(formatter: logging.Formatter, *args, **kw) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIds())
    logger = logging.getLogger("test.obs.units")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info(*args, **kw)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_lines_carry_the_request_id_and_fields():
    with request_context("req-1", "ab" * 16):
        line = json.loads(_log(JsonFormatter("router"), "done %d", 3, extra=fields(status=200, x=None)))
    assert line["message"] == "done 3" and line["service"] == "router" and line["level"] == "INFO"
    assert line["request_id"] == "req-1" and line["trace_id"] == "ab" * 16 and line["status"] == 200
    assert "x" not in line and line["time"].endswith("Z")
    outside = json.loads(_log(JsonFormatter("router"), "idle"))
    assert "request_id" not in outside


def test_text_lines_append_key_value_pairs():
    with request_context("req-2"):
        line = _log(TextFormatter(), "done", extra=fields(status="OK", note="two words", ms=1.23456))
    assert line.rstrip().endswith('done request_id=req-2 status=OK note="two words" ms=1.235')


def test_request_ids_from_outside_are_checked():
    assert valid_request_id("a-B_9.:/+=@") == "a-B_9.:/+=@"
    for bad in ("", "has space", "x" * 129, "new\nline", None):
        assert valid_request_id(bad) is None
    assert request_id_from_metadata((("traceparent", "x"), ("x-request-id", "r1"))) == "r1"
    assert request_id_from_metadata((("x-request-id", "bad id"),)) is None
    assert request_id_from_metadata(None) is None


def test_the_flag_wins_over_the_standard_variables():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4317",
    }
    assert otlp_endpoint("http://flag:4317", env) == "http://flag:4317"
    assert otlp_endpoint(None, env) == "http://b:4317"
    assert otlp_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"}) == "http://a:4317"
    assert otlp_endpoint(None, {}) is None


def test_tracing_off_imports_no_opentelemetry():
    code = (
        "import sys, router.app, router.main, engine_service.server.grpc_server, engine_service.server.main, "
        "tokenizer_service.server, tokenizer_service.main\n"
        "from router.config import RouterConfig\n"
        "router.app.build_app(RouterConfig(engines=('127.0.0.1:1',)))\n"
        "from pagoda.telemetry.tracing import setup_tracing\n"
        "assert setup_tracing('x', None) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tracing_without_the_sdk_is_a_clear_error():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from pagoda.cli import main\n"
        "sys.exit(main(['router', '--port', '0', '--engine', '127.0.0.1:1', '--otlp-endpoint', 'http://x:1']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc" in out.stderr


def _stats(**kw) -> EngineStats:
    base = dict(
        num_running=0, num_waiting=0, kv_cache_usage=0.0, prefix_cache_hit_rate=0.0, num_free_blocks=10,
        num_total_blocks=10, num_preemptions=0, num_prompt_tokens=0, num_generation_tokens=0,
        num_prefix_query_tokens=0, num_prefix_hit_tokens=0,
    )  # fmt: skip
    return EngineStats(**{**base, **kw})


def test_the_stats_line_reports_the_interval():
    prev = _stats(num_prompt_tokens=100, num_generation_tokens=50, num_prefix_query_tokens=200)
    now = _stats(
        num_running=3, num_waiting=2, kv_cache_usage=0.25, num_prompt_tokens=300, num_generation_tokens=150,
        num_prefix_query_tokens=400, num_prefix_hit_tokens=50, num_preemptions=1,
    )  # fmt: skip
    message, values = stats_line(prev, now, 2.0)
    assert message == (
        "engine stats: prompt 100.0 tok/s, generation 50.0 tok/s, running 3, waiting 2, KV cache 25.0%, "
        "prefix cache hit rate 25.0% (last 2 s)"
    )
    assert values["num_preemptions"] == 1 and values["prefix_cache_hit_rate"] == 0.25
