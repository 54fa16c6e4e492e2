"""`pagoda serve`: the whole stack on one machine, as child processes.

It resolves the model once (converting the default GGUF on first use), then starts a tokenizer service, N
engines (one per visible GPU, or one CPU engine) and a router, all on loopback except the router; waits
until the router reports every engine ready; prints the URL and an example; and on Ctrl-C or SIGTERM stops
the router first (no new requests), then the engines (which drain), then the tokenizer.

Children run in their own sessions, so a terminal's Ctrl-C reaches only this supervisor, which stops
them in that order. Their output is relayed line by line, prefixed with the child's name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

STOP_TIMEOUT_S = 40.0  # the engines' default drain grace (30 s) plus some


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagoda serve", description="Serve a model on this machine.")
    p.add_argument(
        "--model", default=None, help="a model folder or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="the router's address (0.0.0.0: reachable from others)"
    )
    p.add_argument("--port", type=int, default=8000, help="the router's HTTP port")
    p.add_argument("--engines", type=int, default=None, help="engines to start (default: one per GPU, or 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="GPUs per engine (each engine splits the model)"
    )
    p.add_argument("--api-key", action="append", default=[], help="require this API key (repeatable)")
    p.add_argument(
        "--embedding-model",
        default=None,
        help="also serve this embedding model (a sentence-transformers decoder folder) on /v1/embeddings, "
        "with one more engine",
    )
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for every engine")
    args = p.parse_args(argv)
    if args.engines is not None and args.engines < 1:
        p.error("--engines must be at least 1")
    if args.tensor_parallel_size < 1:
        p.error("--tensor-parallel-size must be at least 1")
    return args


def count_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_engines(
    device: str, engines: int | None, num_gpus: int, tp_size: int = 1
) -> list[tuple[str, dict[str, str]]]:
    """(device, extra environment) per engine: GPU engines each see their `tp_size` GPUs; CPU engines split
    the cores."""
    if device == "cuda" and num_gpus == 0:
        raise SystemExit("pagoda serve: --device cuda, but no CUDA GPU is visible")
    if device == "cpu" or num_gpus == 0:
        n = engines or 1
        # Several CPU engines each using every core would only fight over them.
        threads = str(max(1, (os.cpu_count() or 1) // n))
        return [("cpu", {"OMP_NUM_THREADS": threads} if n > 1 else {}) for _ in range(n)]
    n = engines or max(1, num_gpus // tp_size)
    if n * tp_size > num_gpus:
        raise SystemExit(
            f"pagoda serve: {n} engines of {tp_size} GPUs asked for, but only {num_gpus} GPUs are visible"
        )
    return [
        ("cuda", {"CUDA_VISIBLE_DEVICES": ",".join(str(i * tp_size + r) for r in range(tp_size))})
        for i in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """One `pagoda` sub-command in its own session, its output relayed with a name prefix."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "pagoda.cli", *args],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._relay = threading.Thread(target=self._relay_output, daemon=True)
        self._relay.start()

    def _relay_output(self) -> None:
        for line in self.popen.stdout:
            sys.stderr.write(f"[{self.name}] {line.decode(errors='replace')}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"pagoda serve: {self.name} did not stop in {timeout_s:.0f}s; killing it", file=sys.stderr)
            self.popen.kill()
            self.popen.wait()
        self._relay.join(5)


def router_health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read() or b"null")
    except (OSError, ValueError):
        return None


class Stack:
    def __init__(
        self, model: str, name: str, args: argparse.Namespace, embedding: tuple[str, str] | None = None
    ):
        """`embedding`: (folder, served name) of an embedding model to serve beside, on an engine of its own
        on the CPU (a GPU's memory belongs to the generation engines); the router routes by model name."""
        num_gpus = count_gpus() if args.device != "cpu" else 0
        plan = plan_engines(args.device, args.engines, num_gpus, args.tensor_parallel_size)
        models = [(model, name)] * len(plan)
        if embedding is not None:
            plan, models = [*plan, ("cpu", {})], [*models, embedding]
        tokenizer_port = free_port()
        engine_ports = [free_port() for _ in plan]
        # Each engine serves its metrics on loopback; the router appends them to its own /metrics.
        metrics_ports = [free_port() for _ in plan]
        self.tokenizer = Child(
            "tokenizer",
            [
                "tokenizer",
                "--model",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                str(tokenizer_port),
                "--metrics-port",
                "0",
            ],
        )
        self.engines = [
            Child(
                f"engine{i}",
                [
                    "engine",
                    "--model",
                    engine_model,
                    "--served-model-name",
                    engine_name,
                    "--device",
                    device,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--metrics-port",
                    str(metrics_port),
                    "--tensor-parallel-size",
                    str(args.tensor_parallel_size if device == "cuda" else 1),
                ],
                env,
            )
            for i, ((device, env), port, metrics_port, (engine_model, engine_name)) in enumerate(
                zip(plan, engine_ports, metrics_ports, models, strict=True)
            )
        ]
        engine_flags = [flag for port in engine_ports for flag in ("--engine", f"127.0.0.1:{port}")]
        engine_flags += [
            flag
            for port in metrics_ports
            for flag in ("--engine-metrics-url", f"http://127.0.0.1:{port}/metrics")
        ]
        key_flags = [flag for key in args.api_key for flag in ("--api-key", key)]
        self.router = Child(
            "router",
            [
                "router",
                "--host",
                args.host,
                "--port",
                str(args.port),
                "--tokenizer",
                f"127.0.0.1:{tokenizer_port}",
                *engine_flags,
                *key_flags,
            ],
        )
        self.children = [self.tokenizer, *self.engines, self.router]
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        self.url = f"http://{host}:{args.port}"

    def wait_ready(self, timeout_s: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop.is_set():
            dead = self.dead()
            if dead is not None:
                print(
                    f"pagoda serve: {dead.name} exited with status {dead.popen.returncode}", file=sys.stderr
                )
                return False
            health = router_health(self.url)
            if health and health.get("engines_ready") == len(self.engines):
                return True
            stop.wait(0.5)
        if not stop.is_set():
            print(f"pagoda serve: not every engine was ready after {timeout_s:.0f}s", file=sys.stderr)
        return False

    def dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)

    def stop(self) -> None:
        # Router first (no new requests), then the engines drain, then the tokenizer they no longer need.
        for group in ([self.router], self.engines, [self.tokenizer]):
            for child in group:
                child.terminate()
            for child in group:
                child.wait(STOP_TIMEOUT_S)


def example(url: str, name: str, api_key: str | None) -> str:
    auth = f" \\\n    -H 'Authorization: Bearer {api_key}'" if api_key else ""
    body = json.dumps(
        {"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    )
    return (
        f"Pagoda is serving {name} at {url}/v1\n\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n    -d '{body}'\n\n"
        f"or with the openai SDK: OpenAI(base_url='{url}/v1', api_key='{api_key or 'none'}')\n"
        "Press Ctrl-C to stop."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pagoda.models import ModelNotFoundError, resolve_model, served_model_name

    try:
        print("pagoda serve: preparing the model (the first run converts it once)...", file=sys.stderr)
        model = str(resolve_model(args.model))
    except ModelNotFoundError as err:
        print(f"pagoda serve: {err}", file=sys.stderr)
        return 2
    name = served_model_name(args.model)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    embedding = None
    if args.embedding_model:
        try:
            embedding = (str(resolve_model(args.embedding_model)), served_model_name(args.embedding_model))
        except ModelNotFoundError as err:
            print(f"pagoda serve: {err}", file=sys.stderr)
            return 2
    stack = Stack(model, name, args, embedding)
    try:
        if not stack.wait_ready(args.startup_timeout, stop):
            return 0 if stop.is_set() else 1
        print(example(stack.url, name, args.api_key[0] if args.api_key else None), flush=True)
        while not stop.wait(0.5):
            dead = stack.dead()
            if dead is not None:
                print(
                    f"pagoda serve: {dead.name} exited with status {dead.popen.returncode}", file=sys.stderr
                )
                return 1
        return 0
    finally:
        print("pagoda serve: stopping", file=sys.stderr)
        stack.stop()
