"""Router overhead: what one router process adds between an OpenAI client and an engine.

    python -m benchmarks.router_overhead [--streams 256] [--output-len 512] [--tokens-per-message 4]

Starts, as separate processes, an engine that streams as fast as gRPC lets it (a fake engine speaking the
real EngineService: canned tokens, `--tokens-per-message` per message, as a busy engine batches what it
produced since its last send) and `pagoda router` in front of it. This process is the client. It measures:

  - throughput: `--streams` concurrent streaming /v1/completions requests (token-id prompts), generated
    tokens per second through the router (`pagoda bench serve`'s client, usage counts from the server);
  - TTFT: `--ttft-requests` sequential requests, each timed to its first token, once straight to the engine
    over gRPC and once through the router over HTTP; the overhead is the difference of the medians.

The figures go to benchmarks/results.jsonl as a `router_overhead` row.
Targets (issue 5): >= 20,000 streamed tokens/s across 256 streams, <= 2 ms added to median TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

from pagoda.bench import serve as bench
from pagoda.bench.results import git_commit, record_result
from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc

REPO = Path(__file__).resolve().parents[1]

# -- the fake engine (runs in its own process) ------------------------------------------------------------


class FastEngine(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, tokens_per_message: int):
        self.k = tokens_per_message
        self.running = 0

    async def GetModelInfo(self, request, context):
        return pb.ModelInfo(
            served_model_name="fast",
            max_model_len=1 << 16,
            block_size=16,
            vocab_size=32000,
            eos_token_ids=[2],
            device="cpu",
            max_num_seqs=1024,
        )

    async def GetServerInfo(self, request, context):
        return pb.ServerInfo(num_running=self.running)

    async def Generate(self, request, context):
        total = request.sampling_params.max_tokens or 16
        n = len(request.prompt_token_ids.ids)
        self.running += 1
        try:
            for start in range(0, total, self.k):
                count = min(self.k, total - start)
                msg = pb.GenerateResponse(
                    token_ids=range(1000 + start, 1000 + start + count), text=" tok" * count
                )
                if start + count >= total:
                    msg.finish_reason = pb.FINISH_REASON_LENGTH
                    msg.usage.prompt_tokens, msg.usage.completion_tokens = n, total
                yield msg
        finally:
            self.running -= 1


async def serve_fast_engine(port: int, tokens_per_message: int) -> None:
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(FastEngine(tokens_per_message), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- the measurement --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL)


async def wait_ready(url: str, timeout_s: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("the router never became healthy")


async def direct_ttfts(address: str, num: int, prompt: list[int]) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        out = []
        for i in range(num):
            request = pb.GenerateRequest(
                request_id=f"direct-{i}",
                prompt_token_ids=pb.TokenIds(ids=prompt),
                sampling_params=pb.SamplingParams(max_tokens=2),
            )
            start = time.perf_counter()
            call = stub.Generate(request)
            await call.read()
            out.append(time.perf_counter() - start)
            while await call.read() is not grpc.aio.EOF:
                pass
        return out


async def measure(args: argparse.Namespace, url: str, engine: str) -> dict:
    prompt = list(range(1000, 1000 + args.input_len))
    common = dict(url=url, model="fast", input_len=args.input_len, progress=False, temperature=0.0)
    # Warm up both paths (connections, first-call costs), then time them.
    await bench.run(bench.BenchConfig(**common, num_prompts=64, output_len=64, max_concurrency=64))
    await direct_ttfts(engine, 20, prompt)
    ttft_cfg = bench.BenchConfig(**common, num_prompts=args.ttft_requests, output_len=2, max_concurrency=1)
    routed = await bench.run(ttft_cfg)
    direct = await direct_ttfts(engine, args.ttft_requests, prompt)
    load = await bench.run(
        bench.BenchConfig(
            **common,
            num_prompts=args.streams * args.rounds,
            output_len=args.output_len,
            max_concurrency=args.streams,
        )
    )
    direct_p50 = statistics.median(direct) * 1e3
    return {
        "tok_s": load["output_tok_s"],
        "errors": load["errors"] + routed["errors"],
        "ttft_direct_p50_ms": round(direct_p50, 3),
        "ttft_router_p50_ms": routed["ttft_ms"]["p50"],
        "ttft_added_ms": round(routed["ttft_ms"]["p50"] - direct_p50, 3),
        "load": load,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2, help="requests per stream slot in the throughput run")
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--tokens-per-message", type=int, default=4)
    p.add_argument("--ttft-requests", type=int, default=300)
    p.add_argument("--results-dir", default=str(REPO / "benchmarks"), help="'' to record nothing")
    p.add_argument("--serve-fast-engine", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_fast_engine:
        asyncio.run(serve_fast_engine(args.serve_fast_engine, args.tokens_per_message))
        return 0
    engine_port, router_port = free_port(), free_port()
    engine = spawn(
        [
            "-m",
            "benchmarks.router_overhead",
            "--serve-fast-engine",
            str(engine_port),
            "--tokens-per-message",
            str(args.tokens_per_message),
        ]
    )
    router = spawn(
        [
            "-m",
            "pagoda.cli",
            "router",
            "--host",
            "127.0.0.1",
            "--port",
            str(router_port),
            "--engine",
            f"127.0.0.1:{engine_port}",
            "--tokenizer",
            "127.0.0.1:1",
        ]
    )
    url = f"http://127.0.0.1:{router_port}"
    try:
        asyncio.run(wait_ready(url))
        result = asyncio.run(measure(args, url, f"127.0.0.1:{engine_port}"))
    finally:
        for proc in (router, engine):
            proc.terminate()
            proc.wait(10)
    load = result.pop("load")
    print(bench.format_report(load))
    print(json.dumps(result, indent=2))
    entry = {
        "kind": "router_overhead",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU only",
        "commit": git_commit(REPO),
        "engine": "fake (gRPC, canned tokens)",
        "streams": args.streams,
        "tokens_per_message": args.tokens_per_message,
        "output_len": args.output_len,
        "result": {**result, "load_report": load},
    }
    if args.results_dir:
        record_result(entry, args.results_dir)
    ok = result["tok_s"] >= 20_000 and result["ttft_added_ms"] <= 2.0 and not result["errors"]
    print("targets (>= 20,000 tok/s, <= 2 ms TTFT added):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
