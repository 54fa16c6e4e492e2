"""The engine service as a benchmark runs it: `python -m engine_service` on random weights in a subprocess
with the offline run's settings, its /metrics scraped as Prometheus would, its CPU time read from /proc.
Used by `pagoda bench grpc` and `benchmarks/router_full_stack.py`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

from pagoda.bench import throughput
from pagoda.bench.peers import subprocess_env


def server_command(
    config: throughput.BenchConfig,
    core: str,
    stream_interval: int,
    metrics_port: int = 0,
    otlp_endpoint: str | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "engine_service",
        "--model",
        config.model_dir,
        "--load-format",
        "dummy",
        "--served-model-name",
        config.shape,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--device",
        config.device,
        "--dtype",
        config.dtype,
        "--max-model-len",
        str(config.max_model_len),
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--max-num-batched-tokens",
        str(config.max_num_batched_tokens),
        "--gpu-memory-utilization",
        str(config.gpu_memory_utilization),
        "--seed",
        str(config.workload.seed),
        "--tensor-parallel-size",
        str(config.tensor_parallel_size),
        "--engine-core",
        core,
        "--stream-interval",
        str(stream_interval),
        "--max-waiting",
        str(max(1024, config.workload.num_prompts)),
    ]
    if not config.prefix_caching:
        cmd.append("--no-prefix-caching")
    if config.enforce_eager:
        cmd.append("--enforce-eager")
    cmd.append("--custom-all-reduce" if config.custom_all_reduce else "--no-custom-all-reduce")
    cmd.append("--pdl" if config.pdl else "--no-pdl")
    if otlp_endpoint:
        cmd += ["--otlp-endpoint", otlp_endpoint]
    return cmd


class EngineProcess:
    """`python -m engine_service` in a subprocess; its log goes to our stderr once the port is read."""

    def __init__(self, cmd: list[str]):
        # No OTEL_EXPORTER_OTLP_* from our environment: tracing is on only when --otlp-endpoint says so.
        env = {k: v for k, v in subprocess_env().items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.port = self._read_port()

    def _read_port(self) -> int:
        for line in self.proc.stderr:
            sys.stderr.write(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                threading.Thread(target=self._pump, daemon=True).start()
                return int(match.group(1))
        raise RuntimeError(f"the engine exited with status {self.proc.wait()} before listening")

    def _pump(self) -> None:
        for line in self.proc.stderr:
            sys.stderr.write(line)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Scraper:
    """GETs the engine's /metrics every `interval_s` seconds from a thread, as Prometheus would."""

    def __init__(self, port: int, interval_s: float):
        self.url, self.interval_s = f"http://127.0.0.1:{port}/metrics", interval_s
        self.num_scrapes, self.errors = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.num_scrapes += 1
            except OSError:
                self.errors += 1


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process and its descendants used so far; None where /proc lacks it."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    try:
        while todo:
            p = todo.pop()
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError, IndexError):
        return None
    return total
