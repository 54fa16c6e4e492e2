"""What metrics and tracing cost: `pagoda bench grpc` with both on against both off, same workload.

    python -m benchmarks.observability_overhead                       # CPU: tiny model, 64 streams
    python -m benchmarks.observability_overhead --device cuda --shape llama-1b --num-prompts 1000 \\
        --input-len 512 --output-len 256 --concurrency 256            # GPU (add --no-tracing without OTel)

"on": the engine serves Prometheus metrics (scraped every second during the run, as Prometheus would) and
exports a trace span per request over OTLP/gRPC to a receiver in another process (pagoda.telemetry.receiver,
which only counts them); "off": --metrics-port 0 and no endpoint. The runs alternate off, on, on, off, ...
(--repeats pairs), each one a fresh engine, so that drift in a shared machine's speed hits both sides alike;
the overhead is 1 - median(on) / median(off) of generated tokens per second. It also reports the CPU time
the engine's processes spent per generated token (Linux /proc), the steadier figure on a machine shared
with other work. Per-request log lines stay on in both. The result goes to benchmarks/results.jsonl as an
`observability_overhead` row. Target (issue 7): at most 2 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pagoda.bench.results import git_commit, record_result

REPO = Path(__file__).resolve().parents[1]
CPU_DEFAULTS = [
    "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--num-prompts", "256", "--input-len", "128",
    "--output-len", "64", "--concurrency", "64",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """`python -m pagoda.telemetry.receiver` in its own process: it takes the spans and counts them."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pagoda.telemetry.receiver", "--port", str(self.port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(1.0)  # it binds at once; give the interpreter a moment to start
        if self.proc.poll() is not None:
            raise RuntimeError("the OTLP receiver did not start (is opentelemetry-proto installed?)")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return int(out.rsplit(":", 1)[-1]) if "spans received" in out else -1


def run_bench(bench_args: list[str], on: bool, receiver: Receiver | None, out_dir: Path, i: int) -> dict:
    out = out_dir / f"run{i}-{'on' if on else 'off'}.json"
    cmd = [sys.executable, "-m", "pagoda.cli", "bench", "grpc", *bench_args, "--no-offline"]
    cmd += ["--results-dir", "", "--out-json", str(out), "--engine-core", "process"]
    if on:
        cmd += ["--metrics-port", str(free_port()), "--scrape-interval", "1"]
        if receiver is not None:
            cmd += ["--otlp-endpoint", receiver.endpoint]
    say(f"run {i} ({'on' if on else 'off'}): {' '.join(cmd[3:])}")
    # On a CPU, one torch thread: OpenMP workers that spin while waiting would count as engine CPU time.
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if "cpu" in bench_args else None
    done = subprocess.run(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    path = out.with_suffix(".process.json")
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"pagoda bench grpc failed (exit {done.returncode}):\n{done.stdout[-2000:]}")
    bench = json.loads(path.read_text())
    grpc = bench["grpc"]
    cpu = grpc.get("engine_cpu_s")
    return {
        "on": on,
        "card": bench["card"],
        "out_tok_s": grpc["out_tok_s"],
        "engine_cpu_ms_per_1k_tokens": None
        if cpu is None
        else round(1e6 * cpu / grpc["num_output_tokens"], 2),
        "ttft_p50_ms": grpc["ttft_ms"]["p50"],
        "tpot_p50_ms": grpc["tpot_ms"]["p50"],
        "observability": grpc.get("observability"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Other flags: pagoda bench grpc's."
    )
    p.add_argument("--repeats", type=int, default=3, help="off/on pairs")
    p.add_argument("--no-tracing", action="store_true", help="'on' is metrics only (no OpenTelemetry here)")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks"), help="'' to record nothing")
    args, bench_args = p.parse_known_args(argv)
    bench_args = bench_args or CPU_DEFAULTS
    receiver = None if args.no_tracing else Receiver()
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for pair in range(args.repeats):
                order = (False, True) if pair % 2 == 0 else (True, False)  # off on, on off, ...
                for on in order:
                    runs.append(run_bench(bench_args, on, receiver, Path(tmp), len(runs)))
                    say(f"  {runs[-1]['out_tok_s']:,.1f} out tok/s")
    finally:
        spans = receiver.stop() if receiver is not None else None
    off = statistics.median(r["out_tok_s"] for r in runs if not r["on"])
    on = statistics.median(r["out_tok_s"] for r in runs if r["on"])
    cpu = {
        side: statistics.median(r["engine_cpu_ms_per_1k_tokens"] for r in runs if r["on"] is side)
        if all(r["engine_cpu_ms_per_1k_tokens"] is not None for r in runs)
        else None
        for side in (False, True)
    }
    entry = {
        "kind": "observability_overhead",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(runs[0]["card"]),
        "commit": git_commit(REPO),
        "bench_args": bench_args,
        "on": "metrics" if args.no_tracing else "metrics + tracing",
        "runs": runs,
        "spans_received": spans,
        "median_off_tok_s": off,
        "median_on_tok_s": on,
        "overhead": round(1 - on / off, 4),
        "spread_off": spread([r["out_tok_s"] for r in runs if not r["on"]]),
        "spread_on": spread([r["out_tok_s"] for r in runs if r["on"]]),
        # Engine CPU time (front + loop processes) per generated token: what the work costs, whatever else
        # the machine is doing.
        "median_off_engine_cpu_ms_per_1k_tokens": cpu[False],
        "median_on_engine_cpu_ms_per_1k_tokens": cpu[True],
        "cpu_overhead": None if cpu[False] is None else round(cpu[True] / cpu[False] - 1, 4),
    }
    print(json.dumps({k: v for k, v in entry.items() if k != "runs"}, indent=2))
    if args.results_dir:
        record_result(entry, args.results_dir)
    return 0


def spread(values: list[float]) -> float:
    return round((max(values) - min(values)) / statistics.median(values), 4)


def say(message: str) -> None:
    print(f"[observability] {message}", file=sys.stderr, flush=True)


def machine(card: str) -> str:
    cpu = f"{platform.machine()} {os.cpu_count()} cores"
    return f"{cpu}, CPU only" if card == "cpu" else f"{card}, {cpu}"


if __name__ == "__main__":
    sys.exit(main())
