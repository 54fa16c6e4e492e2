"""The whole stack as real processes on loopback, observed: `pagoda tokenizer`, one `pagoda engine` (a tiny
random Llama with SmolLM2's tokenizer, CPU, engine loop in its own process) and `pagoda router`, each with
JSON logs, a metrics endpoint and traces exported to an OTLP receiver running in the test process."""

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

from prometheus_client.parser import text_string_to_metric_families

from pagoda.telemetry.receiver import TraceReceiver

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-obs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`pagoda ARGS`, its stderr (the JSON log) in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]):
        self.name = args[0]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "pagoda.cli", *args], cwd=REPO, env=env, stdout=log, stderr=log
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_records(self) -> list[dict]:
        """The JSON lines of the log (anything else, such as a native library's output, is skipped)."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return records

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def wait_until(predicate, timeout_s: float, what: str, processes=()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in processes:
            if not p.alive():
                raise AssertionError(f"{p.name} exited while waiting for {what}:\n{p.log_text()[-4000:]}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in processes)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Stack:
    def __init__(self, model_dir: Path, log_dir: Path):
        self.receiver = TraceReceiver().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        # One torch thread per process (two shared cores); spans leave every 100 ms instead of 5 s.
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", OTEL_BSP_SCHEDULE_DELAY="100")
        otlp = ["--otlp-endpoint", self.receiver.endpoint, "--log-format", "json"]
        self.tokenizer_port, self.engine_port, self.router_port = free_port(), free_port(), free_port()
        self.tokenizer_metrics, self.engine_metrics = free_port(), free_port()
        host = ["--host", "127.0.0.1"]
        self.tokenizer = Process(
            ["tokenizer", "--model", str(model_dir), *host, "--port", str(self.tokenizer_port),
             "--metrics-port", str(self.tokenizer_metrics), "--workers", "1", *otlp],
            log_dir / "tokenizer.log", env,
        )  # fmt: skip
        self.engine = Process(
            ["engine", "--model", str(model_dir), "--served-model-name", MODEL, *host,
             "--port", str(self.engine_port), "--metrics-port", str(self.engine_metrics), "--device", "cpu",
             "--dtype", "float32", "--max-model-len", "512", "--num-kv-blocks", "256", "--max-num-seqs", "16",
             "--block-size", "16", "--log-stats-interval", "0.5", *otlp],
            log_dir / "engine.log", env,
        )  # fmt: skip
        self.router = Process(
            ["router", *host, "--port", str(self.router_port),
             "--tokenizer", f"127.0.0.1:{self.tokenizer_port}", "--engine", f"127.0.0.1:{self.engine_port}",
             "--health-interval", "0.2", *otlp],
            log_dir / "router.log", env,
        )  # fmt: skip
        self.processes = [self.tokenizer, self.engine, self.router]
        self.url = f"http://127.0.0.1:{self.router_port}"
        wait_until(self._ready, 120, "the router to see the engine", self.processes)

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
            return json.loads(r.read())["engines_ready"] == 1

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def metrics(self) -> dict[str, dict]:
        return {
            "engine": scrape(f"http://127.0.0.1:{self.engine_metrics}/metrics"),
            "router": scrape(self.url + "/metrics"),
            "tokenizer": scrape(f"http://127.0.0.1:{self.tokenizer_metrics}/metrics"),
        }

    def stop(self) -> None:
        codes = {p.name: p.stop() for p in reversed(self.processes)}
        self.receiver.stop()
        return codes
