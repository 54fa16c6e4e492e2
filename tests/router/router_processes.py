"""Real `pagoda` processes on loopback for end-to-end tests: start, wait until they answer, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`pagoda ARGS` with its output in a log file (shown when a wait fails)."""

    def __init__(self, args: list[str], log_dir: Path, name: str, env: dict | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        # One torch thread per process: two cores are shared by every process of the test.
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        # Through pagoda.supervised: the process dies with this one (the test run), even if it is killed.
        command = [sys.executable, "-m", "pagoda.supervised", str(os.getpid()), *args]
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log, stderr=log)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)

    def stop(self, timeout_s: float = 15) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def wait_until(predicate, timeout_s: float, what: str, processes: list[Process] = ()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in processes:
            if not p.alive():
                raise AssertionError(
                    f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n{p.log_tail()}"
                )
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in processes)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{logs}")


def engine_info(address: str) -> engine_pb2.ServerInfo:
    with grpc.insecure_channel(address) as channel:
        return engine_pb2_grpc.EngineServiceStub(channel).GetServerInfo(
            engine_pb2.GetServerInfoRequest(), timeout=2
        )


def engine_ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        engine_pb2_grpc.EngineServiceStub(channel).GetModelInfo(engine_pb2.GetModelInfoRequest(), timeout=2)
    return True


def http_json(url: str, timeout_s: float = 5) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def http_text(url: str, timeout_s: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()
