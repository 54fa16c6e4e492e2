"""After real requests through tokenizer, engine and router processes, every metric exists and moved by
exactly the requests and tokens sent; the Grafana dashboard only queries metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from obs_stack import MODEL, REPO, value

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
NO_EOS = {"ignore_eos": True}
DASHBOARD = REPO / "charts/pagoda/dashboards/pagoda.json"

ENGINE_HISTOGRAMS = (
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_prefill_time_seconds",
    "request_decode_time_seconds",
    "request_inference_time_seconds",
    "request_prompt_tokens",
    "request_generation_tokens",
    "iteration_tokens",
)


def send_requests(stack) -> tuple[list[int], list[int], list[int]]:
    """3 identical chats (prefix hits), 1 streamed chat, 2 text completions; all end by length.
    Returns (chat prompt lengths, completion prompt lengths, generated counts)."""
    client = stack.client()
    chat_prompts, text_prompts, generated = [], [], []
    for _ in range(3):
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, extra_body=NO_EOS)
        assert r.choices[0].finish_reason == "length"
        chat_prompts.append(r.usage.prompt_tokens)
        generated.append(r.usage.completion_tokens)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=NO_EOS,
        )
    )
    chat_prompts.append(chunks[-1].usage.prompt_tokens)
    generated.append(chunks[-1].usage.completion_tokens)
    for prompt in ("Once upon a time", "The quick brown fox jumps over"):
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body=NO_EOS)
        text_prompts.append(r.usage.prompt_tokens)
        generated.append(r.usage.completion_tokens)
    assert generated == [5, 5, 5, 7, 4, 4]
    return chat_prompts, text_prompts, generated


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_engine_router_and_tokenizer_metrics_count_what_was_sent(stack):
    before = stack.metrics()
    chat_prompts, text_prompts, generated = send_requests(stack)
    after = stack.metrics()
    num_requests, prompts = len(generated), sum(chat_prompts) + sum(text_prompts)

    e0, e1, m = before["engine"], after["engine"], {"model_name": MODEL}
    assert delta(e1, e0, "pagoda:request_success_total", finished_reason="length", **m) == num_requests
    assert delta(e1, e0, "pagoda:request_success_total", finished_reason="stop", **m) == 0
    assert delta(e1, e0, "pagoda:generation_tokens_total", **m) == sum(generated)
    assert delta(e1, e0, "pagoda:prompt_tokens_total", **m) == prompts
    assert delta(e1, e0, "pagoda:prefix_cache_queries_total", **m) == prompts
    hits = delta(e1, e0, "pagoda:prefix_cache_hits_total", **m)
    assert hits >= 2 * 16  # the 2nd and 3rd identical chats find at least one full block each
    assert delta(e1, e0, "pagoda:num_preemptions_total", **m) == 0
    for name in ENGINE_HISTOGRAMS:
        count = delta(e1, e0, f"pagoda:{name}_count", **m)
        expected = {"inter_token_latency_seconds": sum(generated) - num_requests}.get(name, num_requests)
        if name == "iteration_tokens":
            assert count >= max(generated)  # at least one step per generated token of the longest request
        else:
            assert count == expected, name
        assert value(e1, f"pagoda:{name}_bucket", le="+Inf", **m) == value(e1, f"pagoda:{name}_count", **m)
    assert delta(e1, e0, "pagoda:request_prompt_tokens_sum", **m) == prompts
    assert delta(e1, e0, "pagoda:request_generation_tokens_sum", **m) == sum(generated)
    # Every step computes the prompt tokens not found in the cache, plus one token per generated token.
    assert delta(e1, e0, "pagoda:iteration_tokens_sum", **m) == prompts - hits + sum(generated)
    ttft_sum = value(e1, "pagoda:time_to_first_token_seconds_sum", **m)
    assert 0 < ttft_sum < value(e1, "pagoda:e2e_request_latency_seconds_sum", **m)
    assert value(e1, "pagoda:num_requests_running", **m) == 0
    assert value(e1, "pagoda:num_requests_waiting", **m) == 0
    assert value(e1, "pagoda:kv_cache_usage_perc", **m) == 0
    assert value(e1, "pagoda:engine_ready", **m) == 1
    assert value(e1, "pagoda:cache_config_info", block_size="16", num_gpu_blocks="256", **m) == 1

    r0, r1, model = before["router"], after["router"], {"model": MODEL}
    chat = {"route": "/v1/chat/completions", "status": "200", **model}
    assert delta(r1, r0, "pagoda_router_requests_total", **chat) == 4
    assert delta(r1, r0, "pagoda_router_requests_total", route="/v1/completions", status="200", **model) == 2
    assert delta(r1, r0, "pagoda_router_request_duration_seconds_count", **model) == num_requests
    assert delta(r1, r0, "pagoda_router_time_to_first_token_seconds_count", **model) == num_requests
    assert delta(r1, r0, "pagoda_router_prompt_tokens_total", **model) == prompts
    assert delta(r1, r0, "pagoda_router_generation_tokens_total", **model) == sum(generated)
    assert delta(r1, r0, "pagoda_router_engine_picks_total", policy="prefix_affinity") == num_requests
    assert delta(r1, r0, "pagoda_router_engine_requests_total") == num_requests
    assert delta(r1, r0, "pagoda_router_affinity_picks_total", policy="prefix_affinity") == num_requests
    assert delta(r1, r0, "pagoda_router_engine_retries_total") == 0
    assert value(r1, "pagoda_router_engines_known", **model) == 1
    assert value(r1, "pagoda_router_engines_ready", **model) == 1

    t0, t1 = before["tokenizer"], after["tokenizer"]
    assert delta(t1, t0, "pagoda_tokenizer_requests_total", rpc="Encode", code="OK") == num_requests
    assert delta(t1, t0, "pagoda_tokenizer_request_duration_seconds_count", rpc="Encode") == num_requests
    assert delta(t1, t0, "pagoda_tokenizer_encoded_tokens_total", input="chat") == sum(chat_prompts)
    assert delta(t1, t0, "pagoda_tokenizer_encoded_tokens_total", input="text") == sum(text_prompts)


def dashboard_metric_names(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = dashboard["templating"]["list"]
    exprs += [v["query"]["query"] for v in variables if isinstance(v.get("query"), dict)]
    return {name for e in exprs for name in re.findall(r"\b(pagoda[:_][A-Za-z0-9_:]*)", e)}


def test_the_dashboard_parses_and_queries_only_metrics_that_exist(stack):
    send_requests(stack)  # so that every metric has samples
    dashboard = json.loads(Path(DASHBOARD).read_text())
    names = dashboard_metric_names(dashboard)
    assert {"pagoda:time_to_first_token_seconds_bucket", "pagoda:kv_cache_usage_perc"} <= names
    exposed = {name for samples in stack.metrics().values() for name, _ in samples}
    assert names <= exposed, f"the dashboard queries metrics nobody exposes: {sorted(names - exposed)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
