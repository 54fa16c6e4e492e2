"""A CPU rig for the serving path at GPU token rates: the real stack over a device that only keeps time.

    python benchmarks/serving_rig.py [--streams 256] [--num-prompts 512] [--output-len 128] [--step-ms 6.6] \\
        [--client-processes 1] [--profile DIR] [--offline]

What runs is the product, process for process: `pagoda engine` (its gRPC front and its engine loop in a
process of its own: scheduler, block manager, updates, the pipe, detokenizer, stop strings) and
`pagoda router` (HTTP, SSE, one gRPC channel to the engine), driven by `pagoda bench serve` with
--client-processes clients. Only the device is a stand-in: `TimedExecutor` takes a step's batch, holds
it for as long as a GPU would (`--step-ms` per step plus `--prefill-us` per prompt token), and returns
random token ids from the model's real vocabulary (so detokenizing costs what it costs). It queues steps
as a GPU stream does, so async scheduling overlaps the host's work with the "device" as on a GPU.

It reports what the clients saw (output tokens/s, ITL / TPOT as `pagoda bench serve` defines them, tokens
per event, each stream's p99 gap between events), what the engine loop produced (its own generated-token
counter over the same wall time), and CPU seconds per 1,000 tokens for each process (engine front,
engine loop, router, clients), read from /proc: on a loaded 2-core machine wall-clock rates move with the
neighbours, CPU per token much less, and 1 / (CPU per token) is the rate a process could sustain on a
core of its own. With --offline it also runs the engine loop alone on the same workload (the offline
LLM loop: engine.step + the output processor in one process), the reference for the stack's ratio.
With --profile DIR each process is sampled by py-spy (`pip install py-spy`; on PATH or --py-spy) and
summarized (benchmarks/pyspy_summary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository instead of this folder: benchmarks/kernels.py would shadow the `kernels` package that
# transformers imports.
sys.path[0] = str(REPO)

import torch  # noqa: E402

from engine_service.core.config import EngineConfig  # noqa: E402
from engine_service.core.scheduler import SchedulerOutput  # noqa: E402
from engine_service.engine.engine import Engine  # noqa: E402
from engine_service.executor.executor import Executor  # noqa: E402
from engine_service.worker.sampler import SampleResult  # noqa: E402

# Random output tokens come from here: ordinary word pieces of SmolLM2's vocabulary (and of most others),
# clear of the special and byte tokens at the start.
TOKEN_RANGE = (1000, 40000)


# ---- the stand-in device ----------------------------------------------------------------------------
class _Pending:
    """A launched step: its tokens are "on the host" once the device would have finished it."""

    def __init__(self, done_at: float, result: SampleResult):
        self.done_at, self._result = done_at, result

    def result(self) -> SampleResult:
        wait = self.done_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return self._result


class TimedExecutor(Executor):
    """A device that computes nothing and takes as long as a GPU: steps queue as on a CUDA stream (each
    starts when the previous one ends or when launched, whichever is later) and take `step_s` plus
    `prefill_s_per_token` per prompt token scheduled."""

    supports_async = True

    def __init__(self, step_s: float, prefill_s_per_token: float, seed: int = 0):
        self.device = torch.device("cpu")
        self.step_s, self.prefill_s_per_token = step_s, prefill_s_per_token
        self._free_at = 0.0
        self._rng = random.Random(seed)
        self.num_steps = 0

    def launch(self, out: SchedulerOutput) -> _Pending:
        start = max(time.monotonic(), self._free_at)
        self._free_at = start + self.step_s + self.prefill_s_per_token * out.num_prompt_tokens
        n = len(out.seq_ids) - len(out.partial)  # the entries that sample
        tokens = [self._rng.randrange(*TOKEN_RANGE) for _ in range(n)]
        self.num_steps += 1
        return _Pending(self._free_at, SampleResult(tokens, [None] * n))

    def execute(self, out: SchedulerOutput) -> SampleResult:
        return self.launch(out).result()

    @property
    def kv_bytes_per_block(self) -> int:
        return 1

    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        raise NotImplementedError("give --num-kv-blocks")

    def allocate_kv_cache(self, num_blocks: int, num_sliding_blocks: int | None = None) -> None:
        pass

    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        pass

    def start_profile(self, trace_dir: str) -> None:
        pass

    def stop_profile(self) -> list[str]:
        return []

    def check_alive(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def timed_engine(config: EngineConfig, step_s: float, prefill_s_per_token: float) -> Engine:
    """An Engine over the timed device (picklable with functools.partial, for the engine process)."""
    executor = TimedExecutor(step_s, prefill_s_per_token, config.seed)
    return Engine(config, executor_factory=lambda *args: executor)


def engine_config(args) -> EngineConfig:
    return EngineConfig(
        model=args.model_dir,
        served_model_name="rig",
        device="cpu",
        max_model_len=args.input_len + args.output_len + 16,
        max_num_seqs=args.streams,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_kv_blocks=args.streams * ((args.input_len + args.output_len) // 16 + 2) + 64,
        async_scheduling=True,
        seed=0,
    )


# ---- `serving_rig.py engine`: the engine service over the timed device --------------------------------
def engine_main(args) -> int:
    from engine_service.server.grpc_server import EngineServer
    from engine_service.server.service_config import EngineServiceConfig
    from pagoda.telemetry.logging import setup_logging

    setup_logging("text", "engine")
    config = EngineServiceConfig(
        engine=engine_config(args),
        host="127.0.0.1",
        port=0,
        metrics_port=args.metrics_port,
        max_waiting=max(1024, args.num_prompts),
        log_requests=False,
        log_stats_interval_s=0,
        stream_interval=args.stream_interval,
    )
    factory = functools.partial(
        timed_engine, step_s=args.step_ms / 1e3, prefill_s_per_token=args.prefill_us / 1e6
    )

    async def serve() -> int:
        from engine_service.server.metrics import start_metrics_server

        server = EngineServer(config, engine_factory=factory)
        await server.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(server.drain()))
        metrics = start_metrics_server("127.0.0.1", args.metrics_port, server.state, "rig", {})
        await server.load()
        code = await server.wait()
        metrics.shutdown()
        return code

    if args.uvloop:
        import uvloop

        uvloop.install()
    return asyncio.run(serve())


# ---- the offline reference: the engine loop alone --------------------------------------------------
def offline(args, prompts: list[list[int]]) -> dict:
    """The offline LLM's loop (engine.step, the output processor) over the timed device, in this process."""
    from engine_service.core.sampling_params import SamplingParams
    from engine_service.engine.output_processor import OutputProcessor

    engine = timed_engine(engine_config(args), args.step_ms / 1e3, args.prefill_us / 1e6)
    processor = OutputProcessor(engine.tokenizer)
    params = SamplingParams(max_tokens=args.output_len, temperature=1.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        processor.add_request(f"r{i}", ids, params)
        engine.add_request(f"r{i}", ids, params)
    cpu0, t0 = time.process_time(), time.perf_counter()
    num_tokens = 0
    while engine.has_unfinished():
        deltas, _ = processor.process(engine.step())
        num_tokens += sum(len(d.token_ids) for d in deltas)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "out_tok_s": round(num_tokens / elapsed, 1),
        "tokens": num_tokens,
        "seconds": round(elapsed, 3),
        "steps": engine.num_steps,
        "cpu_ms_per_1k_tokens": round(1e6 * cpu / num_tokens, 2),
    }


# ---- the stack ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generated_tokens(metrics_port: int) -> float:
    """The engine's own counter (pagoda:generation_tokens_total), as Prometheus would read it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("pagoda:generation_tokens_total"):
                return float(line.rsplit(" ", 1)[1])
    raise RuntimeError("no pagoda:generation_tokens_total in the engine's metrics")


class Processes:
    """CPU seconds of the named processes (and, for the engine, its engine-loop child) from /proc."""

    def __init__(self, **pids: int):
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        front = self.procs.get("engine_front")
        if front is not None:  # its spawned engine loop (not multiprocessing's resource tracker)
            for child in front.children():
                if "resource_tracker" not in " ".join(child.cmdline()):
                    self.procs["engine_loop"] = child

    def cpu_s(self) -> dict[str, float]:
        out = {}
        for name, p in self.procs.items():
            t = p.cpu_times()
            out[name] = t.user + t.system
        # The clients: this process and the client processes it waited for.
        t = os.times()
        out["bench"] = t.user + t.system + t.children_user + t.children_system
        return out


def run_stack(args, prompts: list[list[int]]) -> dict:
    from pagoda.bench import grpc_client
    from pagoda.bench import serve as bench

    metrics_port = free_port()
    engine_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "engine",
        *_passthrough(args),
        "--metrics-port",
        str(metrics_port),
    ]
    engine = subprocess.Popen(engine_cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    port = _read_port(engine)
    router_port = free_port()
    router_cmd = [sys.executable, "-m", "pagoda.cli", "router", "--host", "127.0.0.1", "--port"]
    if args.uvloop:  # the router's asyncio.run on uvloop's loop
        launch = "import sys, uvloop; uvloop.install(); from pagoda.cli import main; sys.exit(main())"
        router_cmd[1:3] = ["-c", launch]
    router_cmd += [str(router_port), "--engine", f"127.0.0.1:{port}", "--tokenizer", "127.0.0.1:1"]
    router_cmd += args.router_args.split()
    router = subprocess.Popen(router_cmd, cwd=REPO)
    spies: list[subprocess.Popen] = []
    try:
        asyncio.run(grpc_client.wait_serving(f"127.0.0.1:{port}", 300))
        client = bench.BenchConfig(
            url=f"http://127.0.0.1:{router_port}",
            model="rig",
            max_concurrency=args.streams,
            ignore_eos=True,
            progress=False,
            processes=args.client_processes,
        )
        deadline = time.monotonic() + 60
        while asyncio.run(bench.run(client, [bench.Request([1000, 1001], None, 2)]))["completed"] != 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the router did not serve within 60 s")
            time.sleep(0.5)
        asyncio.run(bench.run(client, [bench.Request(p[:16], None, 8) for p in prompts[:32]]))  # warm-up
        procs = Processes(engine_front=engine.pid, router=router.pid)
        if args.profile:
            spies = _start_spies(args, procs)
        timed = [bench.Request(p, None, args.output_len) for p in prompts]
        tokens0, cpu0 = generated_tokens(metrics_port), procs.cpu_s()
        report = asyncio.run(bench.run(client, timed))
        tokens1, cpu1 = generated_tokens(metrics_port), procs.cpu_s()
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
        router.terminate()
        router.wait(30)
        engine.terminate()
        engine.wait(60)
    engine_tokens = tokens1 - tokens0
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    out = report["output_tokens"] or 1
    return {
        "client": report,
        "engine_generated_tokens": engine_tokens,
        "engine_tok_s": round(engine_tokens / report["duration_s"], 1),
        "cpu_ms_per_1k_tokens": {k: round(1e6 * v / out, 2) for k, v in cpu.items()},
    }


def _passthrough(args) -> list[str]:
    out = []
    for name in ("model_dir", "streams", "num_prompts", "input_len", "output_len", "step_ms", "prefill_us"):
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    out += ["--stream-interval", str(args.stream_interval)]
    return out + (["--uvloop"] if args.uvloop else [])


def _read_port(proc: subprocess.Popen) -> int:
    import re
    import threading

    for line in proc.stderr:
        sys.stderr.write(line)
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:

            def pump() -> None:
                for rest in proc.stderr:
                    sys.stderr.write(rest)

            threading.Thread(target=pump, daemon=True).start()
            return int(match.group(1))
    raise RuntimeError(f"the engine exited with status {proc.wait()} before listening")


def _start_spies(args, procs: Processes) -> list[subprocess.Popen]:
    spy = args.py_spy or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy; or give --py-spy PATH)")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, p in procs.procs.items():
        if name == "bench":
            continue
        # --gil: only samples that hold the GIL, so that a thread waiting for it (or a process waiting
        # for a CPU on a loaded machine) does not show up as work.
        cmd = [spy, "record", "--pid", str(p.pid), "--rate", "200", "--format", "raw", "--nonblocking"]
        cmd += ["--gil", "-o", str(out_dir / f"{name}.txt")]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # attached before the load starts
    return spies


def summarize_profiles(profile_dir: str) -> None:
    for path in sorted(Path(profile_dir).glob("*.txt")):
        if path.name.endswith("-summary.txt"):
            continue
        summary = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "pyspy_summary.py"), str(path), "--top", "45"],
            capture_output=True,
            text=True,
        ).stdout
        path.with_name(path.stem + "-summary.txt").write_text(summary)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[:1] == ["engine"]
    args = parse_args(argv[1:] if sub else argv)
    torch.set_num_threads(1)
    if sub:
        return engine_main(args)
    rng = random.Random(1)
    prompts = [[rng.randrange(*TOKEN_RANGE) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    result = {"config": {k: v for k, v in vars(args).items() if k != "model_dir"}}
    if args.offline:
        result["offline"] = offline(args, prompts)
        print(json.dumps({"offline": result["offline"]}), flush=True)
    result["stack"] = run_stack(args, prompts)
    if args.offline:
        result["stack_over_offline"] = round(
            result["stack"]["client"]["output_tok_s"] / result["offline"]["out_tok_s"], 3
        )
    if args.profile:
        summarize_profiles(args.profile)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serving_rig.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="config.json + tokenizer (default: SmolLM2's folder)")
    p.add_argument("--streams", type=int, default=256, help="concurrent streams = the engine's max_num_seqs")
    p.add_argument("--num-prompts", type=int, default=512)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--step-ms", type=float, default=6.6, help="the device's time per step")
    p.add_argument("--prefill-us", type=float, default=4.0, help="plus this per prompt token in the step")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--client-processes", type=int, default=1)
    p.add_argument("--router-args", default="", help="extra flags for pagoda router")
    p.add_argument("--uvloop", action="store_true", help="the engine front and the router on uvloop")
    p.add_argument("--offline", action="store_true", help="also run the engine loop alone (the reference)")
    p.add_argument("--profile", default=None, help="py-spy each process into this folder")
    p.add_argument("--py-spy", default=None, help="the py-spy binary (default: from PATH)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--metrics-port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model_dir is None:
        from pagoda.models import resolve_model

        args.model_dir = str(resolve_model(None))
    return args


if __name__ == "__main__":
    sys.exit(main())
