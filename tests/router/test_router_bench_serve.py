"""`pagoda bench serve` against the router (scripted engines behind it)."""

from __future__ import annotations

import asyncio
import json
import math

from router_fakes import Script

from pagoda.bench import serve as bench


def config(stack, **kw) -> bench.BenchConfig:
    defaults = dict(
        url=stack.url,
        num_prompts=12,
        input_len=8,
        output_len=5,
        max_concurrency=4,
        progress=False,
        token_range=(3, 200),
    )
    return bench.BenchConfig(**{**defaults, **kw})


async def test_completions_workload_reports_exact_counts_and_latencies(stack):
    # Tokens a step apart (as a real engine sends them), so that each is an event of its own and the
    # inter-token latencies exist: with no pause the engine's Multiplex stream packs them into one message.
    stack.engines[0].script.delay_s = 0.002
    report = await bench.run(config(stack))
    assert (report["completed"], report["errors"], report["model"]) == (12, 0, "scripted"), report[
        "error_examples"
    ]
    assert report["output_tokens"] == 12 * 5 and report["input_tokens"] == 12 * 8
    assert report["output_tok_s"] > 0 and report["request_throughput"] > 0
    for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(report[name]) == {"p50", "p90", "p99", "mean"}
    assert report["ttft_ms"]["p50"] <= report["e2e_ms"]["p50"]
    # Token-id prompts of the asked lengths, EOS ignored, streamed with usage.
    sent = stack.engines[0].requests
    assert all(len(r.prompt_token_ids.ids) == 8 and r.sampling_params.ignore_eos for r in sent)


async def test_client_processes_share_the_requests(stack):
    report = await bench.run(config(stack, processes=3))
    assert (report["completed"], report["errors"]) == (12, 0), report["error_examples"]
    assert report["output_tokens"] == 12 * 5 and report["config"]["processes"] == 3
    assert len(stack.engines[0].requests) == 12  # each request went out once, from one of the processes


async def test_random_lengths_poisson_rate_and_chat(stack):
    report = await bench.run(
        config(stack, endpoint="chat", range_ratio=0.5, request_rate=200.0, max_concurrency=None)
    )
    assert report["completed"] == 12 and report["config"]["request_rate"] == 200.0
    lengths = {r.sampling_params.max_tokens for r in stack.engines[0].requests}
    assert lengths <= {2, 3, 4, 5, 6, 7} and len(lengths) > 1
    assert stack.tokenizer.requests  # chat prompts went through the chat template


async def test_dataset_file_and_errors_are_counted(stack, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        '{"prompt": "Hello", "max_tokens": 3}\n\n{"messages": [{"role": "user", "content": "hi"}]}\n'
    )
    report = await bench.run(config(stack, dataset=str(data), output_len=4))
    assert report["completed"] == 2 and report["output_tokens"] == 3 + 4
    report = await bench.run(config(stack, model="no-such-model", num_prompts=3))
    assert report["completed"] == 0 and report["errors"] == 3 and "HTTP 404" in report["error_examples"][0]


async def test_stream_errors_are_counted(make_stack):
    stack = await make_stack([Script(fail_after_messages=2)])
    report = await bench.run(config(stack, num_prompts=3))
    assert report["errors"] == 3 and report["error_examples"][0].startswith("stream error")


async def test_cli_writes_json(stack, tmp_path):
    out = tmp_path / "report.json"
    argv = [
        "--url",
        stack.url,
        "--num-prompts",
        "4",
        "--input-len",
        "4",
        "--output-len",
        "3",
        "--token-range",
        "3,200",
        "--json",
        str(out),
        "--results-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert await asyncio.to_thread(bench.main, argv) == 0
    report = json.loads(out.read_text())
    assert report["completed"] == 4 and math.isclose(report["output_tokens"], 12)
    assert json.loads((tmp_path / "results.jsonl").read_text())["kind"] == "serve"
