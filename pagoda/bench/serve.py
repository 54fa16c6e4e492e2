"""`pagoda bench serve`: an online benchmark against any OpenAI-compatible server (ours or another).

    pagoda bench serve --url http://127.0.0.1:8000 --num-prompts 500 --input-len 512 --output-len 128 \\
        --request-rate 20            # Poisson arrivals; or --max-concurrency 64 (or both)

Every request streams (`stream_options.include_usage`, so token counts are the server's own). Prompts are
random token ids (`/v1/completions`, fixed or random lengths), random words (`--endpoint chat`), or a
JSONL file with one `{"prompt": ...}` or `{"messages": [...]}` object a line (optionally `"max_tokens"`).

The measures are `vllm bench serve`'s (vllm/benchmarks/serve.py and lib/endpoint_request_func.py, v0.26.0),
so that the two clients report the same quantities on the same server:
  event        an SSE chunk whose `choices` is not empty (a finish chunk with no text counts; the usage
               chunk, whose choices are empty, does not)
  TTFT         request sent -> its first event
  ITL          the gap between a stream's consecutive events, pooled over every stream ("inter-token"
               latency by name, but an event may carry several tokens)
  E2EL         request sent -> its last event (`e2e_ms`)
  TPOT         (E2EL - TTFT) / (completion tokens - 1), per request
  output tok/s completion tokens (the server's usage) / the run's wall time (first send -> last reply)
Percentiles interpolate linearly between ranks (numpy's, as vLLM's). Two more say how smooth the streams
are, which the pooled ITL hides: tokens per event, and each stream's own p99 gap (its distribution over
the streams, `stream_p99_gap_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np

from pagoda.bench import client_processes
from pagoda.bench.results import git_commit, record_result

_WORDS = """time person year way day thing man world life hand part child eye woman place work week case point
company number group problem fact water room mother area money story month lot right study book job word
business issue side kind head house service friend father power hour game line""".split()


@dataclass(frozen=True)
class BenchConfig:
    url: str
    model: str | None = None
    endpoint: str = "completions"  # or "chat"
    num_prompts: int = 200
    input_len: int = 256
    output_len: int = 128
    range_ratio: float = 0.0  # lengths uniform in len * [1 - r, 1 + r]
    dataset: str | None = None
    request_rate: float = math.inf  # requests per second (Poisson); inf: all at once
    max_concurrency: int | None = None
    temperature: float = 1.0
    ignore_eos: bool = True
    seed: int = 0
    # Random prompt token ids: inside any real vocabulary and clear of the special tokens at its start.
    token_range: tuple[int, int] = (1000, 5000)
    api_key: str | None = None
    timeout_s: float = 600.0
    progress: bool = True
    processes: int = 1  # client processes the requests are dealt out over


@dataclass
class Request:
    prompt: str | list[int] | None  # completions
    messages: list[dict] | None  # chat
    max_tokens: int


@dataclass
class Outcome:
    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None  # sent -> first event
    e2e_s: float = 0.0  # sent -> last event
    itl_s: list[float] = field(default_factory=list)  # gaps between consecutive events
    prompt_tokens: int = 0
    output_tokens: int = 0


def build_requests(config: BenchConfig) -> list[Request]:
    rng = np.random.default_rng(config.seed)
    if config.dataset:
        return _dataset_requests(config)

    def lengths(mean: int) -> list[int]:
        lo, hi = max(1, int(mean * (1 - config.range_ratio))), max(1, int(mean * (1 + config.range_ratio)))
        return [int(x) for x in rng.integers(lo, hi + 1, config.num_prompts)]

    out = []
    for n_in, n_out in zip(lengths(config.input_len), lengths(config.output_len), strict=True):
        if config.endpoint == "chat":
            text = " ".join(rng.choice(_WORDS, n_in))
            out.append(Request(None, [{"role": "user", "content": text}], n_out))
        else:
            out.append(Request([int(t) for t in rng.integers(*config.token_range, n_in)], None, n_out))
    return out


def _dataset_requests(config: BenchConfig) -> list[Request]:
    out = []
    for line in Path(config.dataset).read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        max_tokens = int(item.get("max_tokens", config.output_len))
        out.append(Request(item.get("prompt"), item.get("messages"), max_tokens))
        if len(out) == config.num_prompts:
            break
    if not out:
        raise SystemExit(f"pagoda bench serve: no prompts in {config.dataset}")
    return out


def _body(config: BenchConfig, model: str, r: Request) -> tuple[str, dict]:
    body = {
        "model": model,
        "max_tokens": r.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        body["ignore_eos"] = True
    if r.messages is not None:
        return "/v1/chat/completions", {**body, "messages": r.messages}
    return "/v1/completions", {**body, "prompt": r.prompt}


async def send(session: aiohttp.ClientSession, config: BenchConfig, model: str, r: Request) -> Outcome:
    path, body = _body(config, model, r)
    out = Outcome()
    start = last = time.perf_counter()
    try:
        async with session.post(config.url.rstrip("/") + path, json=body) as resp:
            if resp.status != 200:
                out.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return out
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    out.error = f"stream error: {chunk['error'].get('message')}"
                    return out
                if chunk.get("usage"):
                    out.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    out.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices"):  # an event (vLLM's rule: see the module's docstring)
                    now = time.perf_counter()
                    if out.ttft_s is None:
                        out.ttft_s = now - start
                    else:
                        out.itl_s.append(now - last)
                    last = now
    except (aiohttp.ClientError, TimeoutError) as err:
        out.error = f"{type(err).__name__}: {err}"
        return out
    out.e2e_s = last - start
    out.ok = out.ttft_s is not None
    if not out.ok:
        out.error = "no tokens streamed"
    return out


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.started = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:6.1f}s"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def discover_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url.rstrip("/") + "/v1/models") as resp:
        resp.raise_for_status()
        return (await resp.json())["data"][0]["id"]


async def run(config: BenchConfig, requests: list[Request] | None = None) -> dict:
    """Sends the workload and returns the report (see `summarize`)."""
    requests = requests if requests is not None else build_requests(config)
    if config.processes > 1:
        async with _session(config) as session:
            model = config.model or await discover_model(session, config.url)
        outcomes, duration = await asyncio.to_thread(_run_processes, replace(config, model=model), requests)
        return summarize(config, model, outcomes, duration)
    outcomes, duration, model = await _send_all(config, requests, None)
    return summarize(config, model, outcomes, duration)


def _session(config: BenchConfig) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=config.timeout_s),
        headers=headers,
    )


async def _send_all(config: BenchConfig, requests: list[Request], ready) -> tuple[list[Outcome], float, str]:
    """(outcomes in request order, seconds, model); with `ready` (a Barrier) sending starts once every
    process of the run has passed it."""
    async with _session(config) as session:
        model = config.model or await discover_model(session, config.url)
        gate = asyncio.Semaphore(config.max_concurrency or len(requests))
        progress = Progress(len(requests), config.progress and sys.stderr.isatty())
        rng = np.random.default_rng(config.seed + 1)

        async def one(r: Request) -> Outcome:
            async with gate:
                outcome = await send(session, config, model, r)
            progress.step()
            return outcome

        if ready is not None:
            await asyncio.to_thread(ready.wait, 120)
        tasks = []
        start = time.perf_counter()
        for r in requests:
            tasks.append(asyncio.create_task(one(r)))
            if math.isfinite(config.request_rate):
                await asyncio.sleep(rng.exponential(1.0 / config.request_rate))
        outcomes = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return list(outcomes), duration, model


def _run_processes(config: BenchConfig, requests: list[Request]) -> tuple[list[Outcome], float]:
    """The workload dealt out over `config.processes` spawned clients (request i to process i % n), each
    with its share of the concurrency and the request rate: one Python process parsing every streamed
    chunk can fall behind a fast server, and then it measures itself."""
    n = min(config.processes, len(requests))
    shares = []
    for k, share in enumerate(client_processes.deal(requests, n)):
        concurrency = config.max_concurrency
        if concurrency is not None:
            concurrency = max(1, concurrency // n + (k < concurrency % n))
        own = replace(
            config,
            processes=1,
            progress=False,
            seed=config.seed + k,
            request_rate=config.request_rate / n,
            max_concurrency=concurrency,
        )
        shares.append((own, share))
    elapsed, parts = client_processes.run(_worker, shares, timeout_s=config.timeout_s * len(requests))
    return client_processes.merge(parts, len(requests)), elapsed


def _worker(k: int, config: BenchConfig, requests: list[Request], ready, results) -> None:
    outcomes, _, _ = asyncio.run(_send_all(config, requests, ready))
    results.put((k, (time.monotonic(), outcomes)))


def summarize(config: BenchConfig, model: str, outcomes: list[Outcome], duration_s: float) -> dict:
    ok = [o for o in outcomes if o.ok]
    out_tokens = sum(o.output_tokens for o in ok)
    in_tokens = sum(o.prompt_tokens for o in ok)
    tpot = [(o.e2e_s - o.ttft_s) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    num_events = sum(len(o.itl_s) + 1 for o in ok)
    errors = [o.error for o in outcomes if not o.ok]
    return {
        "kind": "serve",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(config).items()
        },
        "model": model,
        "num_requests": len(outcomes),
        "completed": len(ok),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "duration_s": round(duration_s, 3),
        "request_throughput": round(len(ok) / duration_s, 3),
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "output_tok_s": round(out_tokens / duration_s, 1),
        "total_tok_s": round((in_tokens + out_tokens) / duration_s, 1),
        "ttft_ms": percentiles_ms([o.ttft_s for o in ok]),
        "itl_ms": percentiles_ms([gap for o in ok for gap in o.itl_s]),
        "tpot_ms": percentiles_ms(tpot),
        "e2e_ms": percentiles_ms([o.e2e_s for o in ok]),
        "tokens_per_event": round(out_tokens / num_events, 3) if num_events else None,
        # Each stream's p99 gap, over the streams: a stream that stalls shows here even when the pooled
        # ITL is dominated by the smooth ones.
        "stream_p99_gap_ms": percentiles_ms([float(np.percentile(o.itl_s, 99)) for o in ok if o.itl_s]),
    }


def percentiles_ms(seconds: list[float]) -> dict[str, float] | None:
    """p50 / p90 / p99 / mean in milliseconds, interpolated between ranks as numpy (and vLLM) do."""
    if not seconds:
        return None
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return {k: round(float(v) * 1e3, 3) for k, v in (("p50", p50), ("p90", p90), ("p99", p99))} | {
        "mean": round(float(np.mean(seconds)) * 1e3, 3)
    }


def format_report(report: dict) -> str:
    lines = [
        f"model {report['model']}: {report['completed']}/{report['num_requests']} requests in "
        f"{report['duration_s']:.2f} s, {report['errors']} errors",
        f"  requests/s {report['request_throughput']:.2f}   output tok/s {report['output_tok_s']:,.0f}   "
        f"total tok/s {report['total_tok_s']:,.0f}",
        f"  {'ms':<6}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}",
    ]
    for name, key in (("ttft", "ttft"), ("itl", "itl"), ("tpot", "tpot"), ("e2el", "e2e")):
        p = report[f"{key}_ms"]
        if p:
            lines.append(f"  {name:<6}" + "".join(f"{p[k]:>10.2f}" for k in ("p50", "p90", "p99", "mean")))
    gap = report.get("stream_p99_gap_ms")
    if gap:
        lines.append(
            f"  tokens per event {report['tokens_per_event']:.2f}   each stream's p99 gap: p50 "
            f"{gap['p50']:.1f} ms, p99 {gap['p99']:.1f} ms"
        )
    lines += [f"  error: {e}" for e in report["error_examples"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="pagoda bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL (without /v1)")
    p.add_argument("--model", default=None, help="default: the first of /v1/models")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--range-ratio", type=float, default=0.0, help="random lengths in len * [1-r, 1+r]")
    p.add_argument("--dataset", help="JSONL file of prompts instead of random ones")
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson (default: inf)")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false", help="stop at EOS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-range", default="1000,5000", help="LO,HI: random prompt token ids in [LO, HI)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the requests, the concurrency and the rate (one Python process can "
        "fall behind a fast server)",
    )
    p.add_argument("--json", help="write the report to this file")
    p.add_argument("--results-dir", help="append the report to DIR/results.jsonl")
    p.add_argument("--commit", default=None, help="recorded with --results-dir (default: git rev-parse HEAD)")
    p.add_argument("--card", default="unknown", help="recorded with --results-dir: what the server runs on")
    p.add_argument(
        "--note", default=None, help="recorded with --results-dir: which server or setting this was"
    )
    a = p.parse_args(argv)
    if (
        not 0 <= a.range_ratio < 1
        or a.num_prompts < 1
        or (a.max_concurrency is not None and a.max_concurrency < 1)
        or a.processes < 1
    ):
        p.error("--range-ratio must be in [0, 1); --num-prompts, --max-concurrency, --processes at least 1")
    config = BenchConfig(
        url=a.url,
        model=a.model,
        endpoint=a.endpoint,
        num_prompts=a.num_prompts,
        input_len=a.input_len,
        output_len=a.output_len,
        range_ratio=a.range_ratio,
        dataset=a.dataset,
        request_rate=a.request_rate,
        max_concurrency=a.max_concurrency,
        temperature=a.temperature,
        ignore_eos=a.ignore_eos,
        seed=a.seed,
        token_range=tuple(int(x) for x in a.token_range.split(",")),
        api_key=a.api_key,
        timeout_s=a.timeout,
        progress=a.progress,
        processes=a.processes,
    )
    return config, a


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        report = asyncio.run(run(config))
    except aiohttp.ClientError as err:
        print(f"pagoda bench serve: cannot reach {config.url}: {err}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.results_dir:
        row = {**report, "commit": args.commit or git_commit(), "card": args.card}
        record_result(row | ({"note": args.note} if args.note else {}), args.results_dir)
    return 0 if report["completed"] else 1
