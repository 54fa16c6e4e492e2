"""Prometheus metrics read the engine's latest stats when scraped."""

from __future__ import annotations

import socket
import urllib.request

from engine_service.server.metrics import start_metrics_server
from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint(tiny_model_dir):
    with ServerThread(tiny_engine(tiny_model_dir)) as s:
        req = pb.GenerateRequest(
            prompt_token_ids=pb.TokenIds(ids=[5, 6]),
            sampling_params=pb.SamplingParams(max_tokens=4, ignore_eos=True),
        )
        list(s.stub.Generate(req, timeout=10))
        port = free_port()
        http = start_metrics_server("127.0.0.1", port, s.server.state, "tiny")
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        finally:
            http.shutdown()
    assert 'pagoda:engine_ready{model_name="tiny"} 1.0' in body
    assert 'pagoda:kv_cache_usage_perc{model_name="tiny"} 0.0' in body
    generated = next(line for line in body.splitlines() if line.startswith("pagoda:generation_tokens_total"))
    assert float(generated.split()[-1]) == 4  # counted from after the warm-up
