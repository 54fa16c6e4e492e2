"""Health, reflection, metrics, loading and SIGTERM: the service as Kubernetes sees it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from pagoda.tokenizer.v1 import tokenizer_pb2 as pb
from pagoda.tokenizer.v1 import tokenizer_pb2_grpc

SERVICE = "pagoda.tokenizer.v1.TokenizerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BIG_TEXT = "The quick brown fox jumps over the lazy dog, again and again. " * 9000  # ~126k tokens


def health_status(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_not_serving_and_unavailable_until_loaded(make_tokenizer_server, default_model_dir: Path):
    with (
        make_tokenizer_server(default_model_dir, load=False, workers=1) as server,
        server.channel() as channel,
    ):
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        assert health_status(channel) == health_status(channel, SERVICE) == NOT_SERVING
        for call in (lambda: stub.Encode(pb.EncodeRequest(text="hi")), lambda: stub.Info(pb.InfoRequest())):
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in error.value.details()

        server.run(server.server.load())
        assert health_status(channel) == health_status(channel, SERVICE) == SERVING
        assert stub.Encode(pb.EncodeRequest(text="hi")).num_tokens == 1


def test_reflection_lists_the_services(tokenizer_server):
    with tokenizer_server.channel() as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_metrics_count_requests_latency_and_tokens(make_tokenizer_server, default_model_dir: Path, free_port):
    with (
        make_tokenizer_server(default_model_dir, workers=1, metrics_port=free_port) as server,
        server.channel() as channel,
    ):
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        encoded = stub.Encode(pb.EncodeRequest(text="one two three"))
        with pytest.raises(grpc.RpcError):
            stub.Decode(pb.DecodeRequest(token_ids=[10**6]))
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
        )
    assert server.server.metrics_port == free_port
    assert 'pagoda_tokenizer_requests_total{code="OK",rpc="Encode"} 1.0' in body
    assert 'pagoda_tokenizer_requests_total{code="INVALID_ARGUMENT",rpc="Decode"} 1.0' in body
    assert 'pagoda_tokenizer_request_duration_seconds_count{rpc="Encode"} 1.0' in body
    assert f'pagoda_tokenizer_encoded_tokens_total{{input="text"}} {float(encoded.num_tokens)}' in body
    assert 'pagoda_tokenizer_requests_in_flight{rpc="Encode"} 0.0' in body


def test_a_huge_prompt_does_not_stall_other_calls(tokenizer_server, stub, hf_tokenizer):
    """While one worker encodes ~126k tokens, small calls (on the other worker) all finish first."""
    registry = tokenizer_server.server.metrics.registry
    big = stub.Encode.future(pb.EncodeRequest(text=BIG_TEXT))
    _wait_until(
        lambda: registry.get_sample_value("pagoda_tokenizer_requests_in_flight", {"rpc": "Encode"}) == 1
    )
    small = [stub.Encode(pb.EncodeRequest(text=f"hello number {i}")).num_tokens for i in range(5)]
    small.append(len(stub.Decode(pb.DecodeRequest(token_ids=[19556, 905])).text))
    small.append(stub.Info(pb.InfoRequest()).vocab_size)
    assert not big.done(), "the small calls waited for the big one"
    assert all(small)
    assert (
        list(big.result(60).token_ids) == hf_tokenizer.encode(BIG_TEXT)
        and len(big.result().token_ids) > 100_000
    )


def test_sigterm_turns_health_not_serving_and_finishes_calls_in_flight(
    torch_free_env, default_model_dir: Path, free_port
):
    """The service as the router image runs it (no torch): start, serve, SIGTERM, drain, exit 0."""
    command = [sys.executable, "-S", "-m", "tokenizer_service", "--model", str(default_model_dir)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", str(free_port), "--workers", "2"]
    command += ["--max-input-tokens", "1000000"]  # BIG_TEXT is past the model's context on purpose
    process = subprocess.Popen(command, env=torch_free_env, stderr=subprocess.PIPE, text=True)
    try:
        port = int(_wait_for_line(process, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            statuses: list[int] = []
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            watcher = threading.Thread(target=_collect, args=(watch, statuses))
            watcher.start()
            _wait_until(lambda: statuses and statuses[-1] == SERVING)

            stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
            big = stub.Encode.future(pb.EncodeRequest(text=BIG_TEXT))
            _wait_until(lambda: 'in_flight{rpc="Encode"} 1.0' in _scrape(free_port))
            process.send_signal(signal.SIGTERM)
            _wait_until(lambda: statuses[-1] == NOT_SERVING)
            watch.cancel()  # a Watch stream is a call in flight too: end it, or stopping waits for it
            watcher.join(10)
            assert big.result(60).num_tokens > 100_000  # the call in flight finished
        assert process.wait(30) == 0
        assert statuses[0] in (NOT_SERVING, SERVING) and statuses[-2:] == [SERVING, NOT_SERVING]
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_torch_free_environment_really_lacks_torch(torch_free_env):
    probe = "import importlib.util as u, grpc, transformers; assert u.find_spec('torch') is None"
    subprocess.run([sys.executable, "-S", "-c", probe], env=torch_free_env, check=True)


def test_a_model_that_cannot_load_exits_1_with_the_reason(tmp_path: Path):
    command = [sys.executable, "-m", "tokenizer_service", "--model", str(tmp_path / "nope"), "--port", "0"]
    done = subprocess.run(command + ["--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "could not load the tokenizer" in done.stderr and "does not exist" in done.stderr


def test_bad_flags_are_rejected():
    done = subprocess.run(
        [sys.executable, "-m", "tokenizer_service", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--workers must be at least 1" in done.stderr


def _collect(watch, statuses: list[int]) -> None:
    try:
        for response in watch:
            statuses.append(response.status)
    except grpc.RpcError:
        pass  # cancelled by the test, or the server went away


def _scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def _wait_for_line(process: subprocess.Popen, pattern: str) -> re.Match:
    lines = []
    for line in process.stderr:
        lines.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"the service exited ({process.wait()}) without {pattern!r}:\n{''.join(lines)}")


def _wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
