"""`pagoda bench serve` measures what `vllm bench serve` (v0.26.0) measures: against a server whose event
times are scripted, each quantity comes out as vLLM's definition gives it."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from pagoda.bench import serve as bench

GAP_S = 0.06  # between the first and second event
FIRST_S = 0.1  # request -> first event


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    choice = {"index": 0, "logprobs": None, "finish_reason": None}
    await asyncio.sleep(FIRST_S)
    await response.write(event({"choices": [{**choice, "text": "ab"}]}))  # two tokens in one event
    await asyncio.sleep(GAP_S)
    await response.write(event({"choices": [{**choice, "text": "c"}]}))
    # A finish chunk with no text is an event too (vLLM counts any chunk whose choices are not empty);
    # the usage chunk (empty choices) is not.
    await response.write(event({"choices": [{**choice, "text": "", "finish_reason": "length"}]}))
    await response.write(event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}))
    await response.write(b"data: [DONE]\n\n")
    return response


@pytest.fixture
async def url():
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_the_measures_are_vllm_bench_serves(url):
    config = bench.BenchConfig(url=url, model="m", num_prompts=2, input_len=4, output_len=3, progress=False)
    report = await bench.run(config)
    assert (report["completed"], report["output_tokens"], report["input_tokens"]) == (2, 6, 8)
    ttft, itl, tpot, e2e = (report[k] for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"))
    slack = 40  # ms: a loaded machine's scheduling
    assert FIRST_S * 1e3 <= ttft["p50"] < FIRST_S * 1e3 + slack
    # Gaps between consecutive events, the finish chunk's included: [~60, ~0] per stream.
    assert GAP_S * 1e3 <= itl["p99"] < GAP_S * 1e3 + slack
    assert itl["p50"] == pytest.approx(itl["mean"], abs=1) and GAP_S * 1e3 / 2 <= itl["mean"]
    # E2EL ends at the last event (not at [DONE]); TPOT = (E2EL - TTFT) / (completion tokens - 1).
    assert (FIRST_S + GAP_S) * 1e3 <= e2e["p50"] < (FIRST_S + GAP_S) * 1e3 + slack
    assert tpot["p50"] == pytest.approx((e2e["p50"] - ttft["p50"]) / 2, abs=5)
    assert report["tokens_per_event"] == 1.0  # 3 tokens over 3 events (the finish chunk is one)
    assert report["stream_p99_gap_ms"]["p50"] == pytest.approx(0.99 * itl["p99"], rel=0.2)


def test_percentiles_interpolate_between_ranks_as_numpy_does():
    assert bench.percentiles_ms([0.001, 0.002, 0.003, 0.004]) == {
        "p50": 2.5,
        "p90": 3.7,
        "p99": 3.97,
        "mean": 2.5,
    }
    assert bench.percentiles_ms([]) is None
