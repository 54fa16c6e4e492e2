"""A real stack for API-surface tests: `pagoda tokenizer`, one `pagoda engine` (CPU, float32) and
`pagoda router` as processes on loopback, with the engine's flags chosen by the test."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
from router_processes import Process, engine_ready, free_port, http_json, wait_until


class ApiStack:
    def __init__(self, model_dir: Path, log_dir: Path, name: str, engine_flags: list[str], router_flags=()):
        self.name = name
        tokenizer_port, self.router_port, engine_port = free_port(), free_port(), free_port()
        self.engine_address = f"127.0.0.1:{engine_port}"
        self.engine_metrics = f"127.0.0.1:{free_port()}"  # appended to the router's /metrics
        self.tokenizer = Process(
            ["tokenizer", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(tokenizer_port)]
            + ["--metrics-port", "0", "--workers", "1"],
            log_dir,
            "tokenizer",
        )
        self.engine = Process(
            ["engine", "--model", str(model_dir), "--served-model-name", name, "--device", "cpu"]
            + ["--dtype", "float32", "--host", "127.0.0.1", "--port", str(engine_port)]
            + ["--engine-core", "thread", "--metrics-port", self.engine_metrics.rsplit(":", 1)[1]]
            + engine_flags,
            log_dir,
            "engine",
        )
        self.router = Process(
            ["router", "--host", "127.0.0.1", "--port", str(self.router_port)]
            + ["--tokenizer", f"127.0.0.1:{tokenizer_port}", "--engine", self.engine_address]
            + ["--engine-metrics-url", f"http://{self.engine_metrics}/metrics", *router_flags],
            log_dir,
            "router",
        )
        self.processes = [self.tokenizer, self.engine, self.router]
        self.url = f"http://127.0.0.1:{self.router_port}"

    def wait_ready(self) -> None:
        wait_until(lambda: engine_ready(self.engine_address), 180, "the engine", self.processes)
        wait_until(
            lambda: http_json(self.url + "/health")[1]["engines_ready"] == 1, 60, "the router", self.processes
        )

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()


def post_json(url: str, body: object, timeout_s: float = 60) -> tuple[int, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
