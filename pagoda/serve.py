"""`pagoda serve`: the whole stack on one machine, as child processes, supervised.

It checks that the router's port is free, resolves the model once (converting the default GGUF on first
use), then starts a tokenizer service, N engines (one per visible GPU, or one CPU engine) and a router, all
on loopback except the router; waits until the router reports every engine ready; prints the URL and an
example; and on Ctrl-C or SIGTERM stops the router first (no new requests), then the engines (which
drain), then the tokenizer.

Like a process manager, it restarts a child that dies once the stack has served, after a backoff (1 s,
doubling to 30 s; back to 1 s after a minute up), while the others keep serving: the router ejects a
dead engine and takes it back when it answers again on its port. A child that dies while the stack
starts ends `serve` (status 1): something is wrong that a restart will not mend.

Children run in their own sessions, so a terminal's Ctrl-C reaches only this supervisor, which stops
them in that order; and they die with it (SIGTERM from the kernel, pagoda/supervised.py) if it is
killed. Their output is relayed line by line, prefixed with the child's name.

Secrets: the gRPC token that engines and tokenizer require (random, made per run) and the API keys
(--api-key, --api-key-file, or the PAGODA_API_KEY environment variable) reach the children as files in a
private folder, never on a command line, and are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pagoda.cli_args import add_config_args, config_values

STOP_TIMEOUT_S = 40.0  # the engines' default drain grace (30 s) plus some
API_KEY_ENV = "PAGODA_API_KEY"
RESTART_BACKOFF_S = (1.0, 30.0)  # first and longest wait before a dead child is started again
HEALTHY_AFTER_S = 60.0  # a child up this long starts its backoff afresh


@dataclass(frozen=True)
class ServeConfig:
    """`pagoda serve`'s settings: a flag per field (pagoda/cli_args.py)."""

    model: str | None = field(
        default=None, metadata={"help": "a model folder or .gguf file (default: SmolLM2-135M-Instruct)"}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "the router's address (0.0.0.0: reachable from others)"}
    )
    port: int = field(default=8000, metadata={"help": "the router's HTTP port"})
    engines: int | None = field(
        default=None, metadata={"help": "engines to start (default: one per GPU, or 1)"}
    )
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "where the engines run (auto: CUDA if a GPU is visible)"}
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "GPUs per engine (each engine splits the model)"}
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "api-key",
            "help": f"require this API key (repeatable; visible in `ps`: prefer {API_KEY_ENV} or "
            "--api-key-file)",
        },
    )
    api_key_file: str | None = field(
        default=None,
        metadata={"help": "require one of the API keys of this file (one a line, re-read live)"},
    )
    embedding_model: str | None = field(
        default=None,
        metadata={
            "help": "also serve this embedding model (a sentence-transformers decoder folder) on "
            "/v1/embeddings, with one more engine (on the CPU)"
        },
    )
    startup_timeout_s: float = field(default=900.0, metadata={"help": "seconds to wait for every engine"})


def parse_args(argv: list[str] | None) -> ServeConfig:
    p = argparse.ArgumentParser(prog="pagoda serve", description="Serve a model on this machine.")
    add_config_args(p, ServeConfig)
    args = p.parse_args(argv)
    if args.engines is not None and args.engines < 1:
        p.error("--engines must be at least 1")
    if args.tensor_parallel_size < 1:
        p.error("--tensor-parallel-size must be at least 1")
    if args.api_key_file and args.api_keys:
        p.error("give API keys either with --api-key-file or with --api-key, not both")
    return ServeConfig(**config_values(args, ServeConfig))


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


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port already (as the router would bind it: reusing TIME_WAIT)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Child:
    """One `pagoda` sub-command in its own session, dying with this process (pagoda/supervised.py), its
    output relayed with a name prefix; started again by `restart_if_dead` after a backoff."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.args = args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.restarts = 0
        self._backoff_s = RESTART_BACKOFF_S[0]
        self._restart_at: float | None = None
        self._start()

    def _start(self) -> None:
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "pagoda.supervised", str(os.getpid()), *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._relay = threading.Thread(target=self._relay_output, args=(self.popen,), daemon=True)
        self._relay.start()

    def _relay_output(self, popen: subprocess.Popen) -> None:
        for line in popen.stdout:
            sys.stderr.write(f"[{self.name}] {line.decode(errors='replace')}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def restart_if_dead(self, now: float) -> None:
        """Call often: a dead child is scheduled, then started again, `_backoff_s` after it died."""
        if self.alive():
            if now - self.started_at > HEALTHY_AFTER_S:
                self._backoff_s = RESTART_BACKOFF_S[0]
            return
        if self._restart_at is None:
            self._restart_at = now + self._backoff_s
            print(
                f"pagoda serve: {self.name} exited with status {self.popen.returncode}; "
                f"starting it again in {self._backoff_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            self._backoff_s = min(RESTART_BACKOFF_S[1], 2 * self._backoff_s)
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self._start()

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


def write_private(folder: Path, name: str, text: str) -> str:
    """A file only this user can read (the folder is the user's own, mode 0700)."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return str(path)


class Stack:
    def __init__(
        self,
        model: str,
        name: str,
        args: ServeConfig,
        api_keys: list[str],
        embedding: tuple[str, str] | None = None,
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
        self.secrets = Path(tempfile.mkdtemp(prefix="pagoda-serve-"))  # mode 0700
        token = write_private(self.secrets, "grpc-token", secrets.token_urlsafe(32) + "\n")
        auth = ["--grpc-token-file", token]
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
                *auth,
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
                    *auth,
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
        key_flags = []
        if args.api_key_file:
            key_flags = ["--api-key-file", str(Path(args.api_key_file).resolve())]
        elif api_keys:
            key_flags = [
                "--api-key-file",
                write_private(self.secrets, "api-keys", "\n".join(api_keys) + "\n"),
            ]
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
                *auth,
            ],
            # The router reads PAGODA_API_KEY: the keys reach it through key_flags' file only.
            {API_KEY_ENV: ""},
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

    def supervise(self) -> None:
        now = time.monotonic()
        for child in self.children:
            child.restart_if_dead(now)

    def stop(self) -> None:
        # Router first (no new requests), then the engines drain, then the tokenizer they no longer need.
        for group in ([self.router], self.engines, [self.tokenizer]):
            for child in group:
                child.terminate()
            for child in group:
                child.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.secrets, ignore_errors=True)


def example(url: str, name: str, api_keys: bool) -> str:
    """The banner: how to reach the stack. An API key is never printed: it is named by where it lives."""
    auth = f' \\\n    -H "Authorization: Bearer ${API_KEY_ENV}"' if api_keys else ""
    body = json.dumps(
        {"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    )
    key = f"os.environ['{API_KEY_ENV}']" if api_keys else "'none'"
    return (
        f"Pagoda is serving {name} at {url}/v1\n\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n    -d '{body}'\n\n"
        f"or with the openai SDK: OpenAI(base_url='{url}/v1', api_key={key})\n"
        + (f"(API keys are required: set {API_KEY_ENV} to one of them.)\n" if api_keys else "")
        + "Press Ctrl-C to stop."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_keys = [*args.api_keys]
    if os.environ.get(API_KEY_ENV, "").strip() and not args.api_key_file:
        api_keys.append(os.environ[API_KEY_ENV].strip())
    if port_in_use(args.host, args.port):
        print(
            f"pagoda serve: {args.host}:{args.port} is in use already; pick another --port", file=sys.stderr
        )
        return 2
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
    stack = Stack(model, name, args, api_keys, embedding)
    try:
        if not stack.wait_ready(args.startup_timeout_s, stop):
            return 0 if stop.is_set() else 1
        print(example(stack.url, name, bool(api_keys or args.api_key_file)), flush=True)
        while not stop.wait(0.5):
            stack.supervise()
        return 0
    finally:
        print("pagoda serve: stopping", file=sys.stderr)
        stack.stop()
