"""Health through start-up, drain and failure: in-process servers, and one real process sent SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from tests.engine_service.server_thread import ServerThread, tiny_engine

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REPO = Path(__file__).resolve().parents[2]


def loop_request(scripts, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=scripts["loop"][:1]),
        sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )


def health(channel, service: str = "") -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_drain_finishes_in_flight_and_refuses_new(tiny_model_dir, scripts):
    with ServerThread(tiny_engine(tiny_model_dir), shutdown_grace_period_s=20) as s:
        assert health(s.channel) == health(s.channel, "pagoda.engine.v1.EngineService") == SERVING
        stream = s.stub.Generate(loop_request(scripts, 200), timeout=30)
        next(stream)
        drained = asyncio.run_coroutine_threadsafe(s.server.drain(), s._loop)
        wait_until(lambda: health(s.channel) == NOT_SERVING)
        assert s.stub.GetServerInfo(pb.GetServerInfoRequest()).draining
        with pytest.raises(grpc.RpcError) as e:
            list(s.stub.Generate(loop_request(scripts, 5), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        rest = list(stream)
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH and rest[-1].usage.completion_tokens == 200
        drained.result(10)
        assert s.wait() == 0


def test_grace_period_over_aborts_what_is_left(tiny_model_dir, scripts):
    with ServerThread(tiny_engine(tiny_model_dir), shutdown_grace_period_s=0.3) as s:
        stream = s.stub.Generate(loop_request(scripts, 900), timeout=30)
        next(stream)
        asyncio.run_coroutine_threadsafe(s.server.drain(), s._loop)
        rest = list(stream)
        assert rest[-1].finish_reason == pb.FINISH_REASON_ABORT
        assert s.wait() == 0


def _boom():
    raise RuntimeError("simulated CUDA error")


def _stall():
    time.sleep(2)
    return []


@pytest.mark.parametrize("fault,words", [(_boom, "simulated CUDA error"), (_stall, "stalled")])
def test_dead_or_stalled_loop_fails_streams_and_exits_nonzero(tiny_model_dir, scripts, fault, words):
    engine = tiny_engine(tiny_model_dir)
    with ServerThread(engine, step_timeout_s=0.5) as s:
        watch = health_pb2_grpc.HealthStub(s.channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=20
        )
        assert next(watch).status == SERVING
        stream = s.stub.Generate(loop_request(scripts, 900), timeout=30)
        next(stream)
        engine.step_packed = fault  # the loop thread calls engine.step_packed() next
        with pytest.raises(grpc.RpcError) as e:
            list(stream)
        assert e.value.code() == grpc.StatusCode.INTERNAL and words in e.value.details()
        assert next(watch).status == NOT_SERVING
        assert s.wait() == 1


@pytest.mark.parametrize("core", ["thread", "process"])
def test_sigterm_with_a_stream_in_flight(tiny_model_dir, scripts, core):
    """A real `python -m engine_service`: NOT_SERVING while loading, SERVING, SIGTERM drains, exit 0."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine_service",
            "--model",
            str(tiny_model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--num-kv-blocks",
            "64",
            "--shutdown-grace-period",
            "30",
            "--engine-core",
            core,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        port = _read_port(proc)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        statuses = [next(watch).status]
        while statuses[-1] != SERVING:
            statuses.append(next(watch).status)
        assert statuses[0] == NOT_SERVING  # bound before the model loaded
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        stream = stub.Generate(loop_request(scripts, 300), timeout=60)
        next(stream)
        proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        rest = list(stream)
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH and rest[-1].usage.completion_tokens == 300
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def _read_port(proc: subprocess.Popen) -> int:
    for line in proc.stderr:
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"the engine exited with {proc.wait()} before listening")
