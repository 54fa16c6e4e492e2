"""The engine service with TP=2 on CPU: it streams like TP=1, and a dead worker takes it down cleanly
(streams end INTERNAL, health NOT_SERVING, exit status 1), never a hang; SIGTERM stops the workers too."""

from __future__ import annotations

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

from engine_service.engine.engine import Engine
from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from tests.engine_service.scripted_model import write_scripted_model
from tests.engine_service.server_thread import ServerThread, tiny_config

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOOP = " red green blue"  # the scripted model repeats it for ever


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, default_model_dir) -> tuple[Path, list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tokenizer.encode(LOOP)
    folder = tmp_path_factory.mktemp("tp-scripted")
    return write_scripted_model(folder, tokenizer, {"loop": ids}, default_model_dir), ids


def loop_request(ids: list[int], max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=ids[:1]),
        sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )


def test_dead_worker_fails_streams_and_the_service(scripted):
    folder, ids = scripted
    engine = Engine(tiny_config(folder, tensor_parallel_size=2))
    try:
        with ServerThread(engine, step_timeout_s=30) as s:
            done = list(s.stub.Generate(loop_request(ids, 3 * len(ids)), timeout=30))
            assert "".join(r.text for r in done) == " green blue red" * 3  # the prompt is " red"
            watch = health_pb2_grpc.HealthStub(s.channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == SERVING
            stream = s.stub.Generate(loop_request(ids, 900), timeout=30)
            next(stream)
            os.kill(engine.executor.workers[1].proc.pid, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as e:
                list(stream)
            assert e.value.code() == grpc.StatusCode.INTERNAL
            assert "tensor-parallel worker 1" in e.value.details()
            assert next(watch).status == NOT_SERVING
            assert s.wait() == 1
    finally:
        engine.shutdown()
    assert all(w.proc.poll() is not None for w in engine.executor.workers)


def test_worker_dying_while_idle_turns_health_off_without_a_request(scripted):
    folder, ids = scripted
    engine = Engine(tiny_config(folder, tensor_parallel_size=2))
    try:
        with ServerThread(engine, step_timeout_s=30) as s:
            list(s.stub.Generate(loop_request(ids, 4), timeout=30))
            watch = health_pb2_grpc.HealthStub(s.channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == SERVING
            os.kill(engine.executor.workers[0].proc.pid, signal.SIGKILL)
            start = time.monotonic()
            assert next(watch).status == NOT_SERVING  # no request was sent: the idle loop noticed
            assert time.monotonic() - start < 10
            assert s.wait() == 1
    finally:
        engine.shutdown()


def start_engine(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine_service",
            "--model",
            str(folder),
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
            "--max-num-seqs",
            "8",
            "--tensor-parallel-size",
            "2",
            "--engine-core",
            "process",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )


def serving_channel(proc: subprocess.Popen) -> grpc.Channel:
    for line in proc.stderr:
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            channel = grpc.insecure_channel(f"127.0.0.1:{match.group(1)}")
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            while next(watch).status != SERVING:
                pass
            return channel
    raise AssertionError(f"the engine exited with {proc.wait()} before listening")


def worker_pids(root: int) -> list[int]:
    """Descendants of `root` that are tensor-parallel workers."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)

    def descends(pid: int) -> bool:
        while pid in parents and pid > 1:
            pid = parents[pid][0]
            if pid == root:
                return True
        return False

    return [p for p, (_, cmd) in parents.items() if b"engine_service.worker.tp_worker" in cmd and descends(p)]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill a worker", "SIGTERM"])
def test_engine_process_with_two_ranks(scripted, how):
    """`pagoda engine --tensor-parallel-size 2`: workers under the engine-core process."""
    folder, ids = scripted
    proc = start_engine(folder)
    try:
        channel = serving_channel(proc)
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        workers = worker_pids(proc.pid)
        assert len(workers) == 2
        stream = stub.Generate(loop_request(ids, 900), timeout=60)
        assert next(stream).text
        if how == "kill a worker":
            os.kill(workers[0], signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as e:
                list(stream)
            assert e.value.code() == grpc.StatusCode.INTERNAL
            assert "tensor-parallel worker" in e.value.details()
            assert proc.wait(30) == 1
        else:
            stream.cancel()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while not all(gone(p) for p in workers):
            assert time.monotonic() < deadline, "tensor-parallel workers outlived the engine"
            time.sleep(0.05)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
