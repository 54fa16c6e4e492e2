"""The whole stack as real processes on loopback, with the levers fault tests pull.

    tokenizer ─┐
    engine 0 ──┼── router(s)      engines keep their port across restarts, so a router's static list
    engine 1 ──┘                  finds the new process where the old one was

Engines serve a tiny random Llama (2 layers, hidden 64, the default model's tokenizer), CPU, float32.
`heal()` undoes whatever a test did (kills, SIGSTOP, a stopped tokenizer), so one stack serves a session.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from tests.router.router_processes import Process, engine_ready, free_port, wait_until

MODEL = "tiny-llama"


def chat_body(i: int, max_tokens: int, stream: bool = True, **extra) -> dict:
    """A chat request of its own (the prompt names `i`), greedy, running to max_tokens."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Client {i} asks for a story about the number {i}."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        # Greedy: sampling noise costs far more than the tiny model itself on a CPU.
        "temperature": 0,
        **extra,
    }
    return {**body, "stream": True} if stream else body


@dataclass
class Tls:
    """Certificate files for the stack (see reliability_certs.py): server side and the router's client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None


@dataclass
class Router:
    process: Process
    url: str
    ssl: ssl.SSLContext | None = None  # trusts the router's certificate, for an HTTPS router

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=self.ssl) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def engine_requests(self) -> dict[str, float]:
        pattern = r'pagoda_router_engine_requests_total\{engine="([^"]+)"\} ([0-9.e+]+)'
        return {a: float(v) for a, v in re.findall(pattern, self.metrics())}

    def counter(self, name: str) -> float:
        """A metric summed over its labels."""
        values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", self.metrics(), re.M)
        return sum(float(v) for v in values)


@dataclass
class Stack:
    model_dir: Path
    log_dir: Path
    num_engines: int = 2
    device: str = "cpu"
    engine_args: tuple[str, ...] = ()
    tls: Tls | None = None
    # gRPC token files (pagoda/grpc_auth.py): what engines and tokenizer accept, and what routers send.
    accepted_tokens: Path | None = None
    router_token: Path | None = None
    tokenizer_port: int = field(default_factory=free_port)
    engine_ports: list[int] = field(default_factory=list)
    health_ports: list[int] = field(default_factory=list)  # with TLS: each engine's plaintext health port
    engines: list[Process] = field(default_factory=list)
    tokenizer: Process | None = None
    routers: list[Router] = field(default_factory=list)
    _starts: int = 0

    def __post_init__(self) -> None:
        self.engine_ports = [free_port() for _ in range(self.num_engines)]
        self.health_ports = [free_port() for _ in range(self.num_engines)] if self.tls else []
        self.tokenizer = self._start_tokenizer()
        self.engines = [self._start_engine(i) for i in range(self.num_engines)]
        try:
            for i in range(self.num_engines):
                self.wait_engine(i)
        except BaseException:
            self.stop()  # no process outlives a stack that failed to start
            raise

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.engine_ports]

    @property
    def processes(self) -> list[Process]:
        return [self.tokenizer, *self.engines, *(r.process for r in self.routers)]

    # -- starting ---------------------------------------------------------------------------------------

    def _server_tls_args(self) -> list[str]:
        auth = ["--grpc-token-file", str(self.accepted_tokens)] if self.accepted_tokens else []
        if self.tls is None:
            return auth
        args = ["--tls-cert", str(self.tls.server_cert), "--tls-key", str(self.tls.server_key)]
        return auth + args + (["--tls-client-ca", str(self.tls.ca)] if self.tls.client_cert else [])

    def _name(self, base: str) -> str:
        self._starts += 1
        return f"{base}-{self._starts}"

    def _start_tokenizer(self) -> Process:
        args = ["tokenizer", "--model", str(self.model_dir), "--host", "127.0.0.1"]
        args += ["--port", str(self.tokenizer_port), "--metrics-port", "0", "--workers", "1"]
        return Process(args + self._server_tls_args(), self.log_dir, self._name("tokenizer"))

    def _start_engine(self, i: int) -> Process:
        args = ["engine", "--model", str(self.model_dir), "--served-model-name", MODEL]
        args += ["--device", self.device, "--dtype", "float32", "--host", "127.0.0.1"]
        args += ["--port", str(self.engine_ports[i]), "--metrics-port", "0", "--max-model-len", "512"]
        args += ["--num-kv-blocks", "1024", "--block-size", "16", *self.engine_args, *self._server_tls_args()]
        if self.tls is not None:
            args += ["--health-port", str(self.health_ports[i])]
        return Process(args, self.log_dir, self._name(f"engine{i}"))

    def start_router(
        self, *extra: str, client_ssl: ssl.SSLContext | None = None, env: dict | None = None
    ) -> Router:
        """A router over every engine, with `extra` flags (and `env`); `client_ssl` trusts its certificate
        (HTTPS). A `--tokenizer` among `extra` replaces the stack's own."""
        port = free_port()
        args = ["router", "--host", "127.0.0.1", "--port", str(port)]
        if self.router_token is not None:
            args += ["--grpc-token-file", str(self.router_token)]
        if "--tokenizer" not in extra:
            args += ["--tokenizer", f"127.0.0.1:{self.tokenizer_port}"]
        args += ["--health-interval", "0.5"]
        for address in self.addresses:
            args += ["--engine", address]
        if self.tls is not None:
            args += ["--grpc-tls-ca", str(self.tls.ca)]
            if self.tls.client_cert:
                args += [
                    "--grpc-tls-cert",
                    str(self.tls.client_cert),
                    "--grpc-tls-key",
                    str(self.tls.client_key),
                ]
            if self.tls.server_name:
                args += ["--grpc-tls-server-name", self.tls.server_name]
        scheme = "https" if "--tls-cert" in extra else "http"
        process = Process(args + list(extra), self.log_dir, self._name("router"), env)
        router = Router(process, f"{scheme}://127.0.0.1:{port}", client_ssl)
        self.routers.append(router)
        try:
            self.wait_router(router, self.num_engines)
        except BaseException:
            process.stop()
            self.routers.remove(router)
            raise
        return router

    # -- waiting ----------------------------------------------------------------------------------------

    def wait_engine(self, i: int, timeout_s: float = 300) -> None:  # a loaded 2-core machine: minutes
        if self.tls is not None:
            return  # probed through the router instead
        ready = engine_serving if self.accepted_tokens is not None else engine_ready  # health needs no token
        wait_until(lambda: ready(self.addresses[i]), timeout_s, f"engine {i}", self.processes)

    def wait_router(self, router: Router, num_ready: int, timeout_s: float = 60) -> None:
        wait_until(
            lambda: router.health()["engines_ready"] == num_ready,
            timeout_s,
            f"{router.url} to see {num_ready} engines ready",
            self.processes,
        )

    # -- faults -----------------------------------------------------------------------------------------

    def kill_engine(self, i: int) -> None:
        """SIGKILL the engine's front process (its engine-core child then exits on its own)."""
        self.engines[i].kill()

    def pause_engine(self, i: int) -> None:
        self.engines[i].popen.send_signal(signal.SIGSTOP)

    def resume_engine(self, i: int) -> None:
        self.engines[i].popen.send_signal(signal.SIGCONT)

    def start_engine(self, i: int) -> None:
        """Starts engine i (stopped), without waiting. Call it from the thread that outlives the engine: it
        dies with the thread that started it (pagoda.supervised)."""
        self.engines[i] = self._start_engine(i)

    def restart_engine(self, i: int) -> None:
        if self.engines[i].alive():
            self.resume_engine(i)
            self.engines[i].stop()
        self.engines[i] = self._start_engine(i)
        self.wait_engine(i)

    def restart_tokenizer(self) -> None:
        if self.tokenizer.alive():
            self.tokenizer.stop()
        self.tokenizer = self._start_tokenizer()

    def heal(self) -> None:
        """Every engine and the tokenizer running and resumed, and every router seeing all engines."""
        for i, engine in enumerate(self.engines):
            if engine.alive():
                self.resume_engine(i)
            else:
                self.engines[i] = self._start_engine(i)
        if not self.tokenizer.alive():
            self.tokenizer = self._start_tokenizer()
        for i in range(self.num_engines):
            self.wait_engine(i)
        for router in self.routers:
            if router.process.alive():
                self.wait_router(router, self.num_engines)

    def stop(self) -> None:
        for i, engine in enumerate(self.engines):
            if engine.alive():
                self.resume_engine(i)
        for p in [*(r.process for r in self.routers), *self.engines, self.tokenizer]:
            p.stop()

    # -- what the engines and processes report ----------------------------------------------------------

    def engine_info(self, i: int) -> engine_pb2.ServerInfo:
        with grpc.insecure_channel(self.addresses[i]) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            return stub.GetServerInfo(engine_pb2.GetServerInfoRequest(), timeout=5)

    def engines_idle(self) -> bool:
        """Nothing running or waiting, and every KV block free (cached prefix blocks count as free)."""
        infos = [self.engine_info(i) for i in range(self.num_engines)]
        return all(
            i.num_running == 0 and i.num_waiting == 0 and i.num_free_blocks == i.num_total_blocks
            for i in infos
        )

    def wait_idle(self, timeout_s: float = 15) -> None:
        wait_until(self.engines_idle, timeout_s, "every engine idle with all KV blocks free", self.processes)


def engine_serving(address: str) -> bool:
    """grpc.health.v1 says SERVING (open to callers without the gRPC token)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Usage:
    """A process and its children (an engine's front and its engine-core process)."""

    rss_mb: float
    fds: int
    threads: int

    @classmethod
    def of(cls, process: Process) -> Usage:
        import psutil

        root = psutil.Process(process.popen.pid)
        procs = [root, *root.children(recursive=True)]
        return cls(
            rss_mb=sum(p.memory_info().rss for p in procs) / 2**20,
            fds=sum(p.num_fds() for p in procs),
            threads=sum(p.num_threads() for p in procs),
        )

    def __str__(self) -> str:
        return f"{self.rss_mb:.0f} MB, {self.fds} fds, {self.threads} threads"
