"""JSON logs of the three services: one line per finished request with its id, model, status, token counts
and timings; the client's X-Request-Id reaches the tokenizer's and the engine's lines; no prompt text
anywhere; the engine's periodic stats line."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

from obs_stack import MODEL


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a POST, errors included."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def lines_with(process, request_id: str, timeout_s: float = 10.0) -> list[dict]:
    """The process's JSON log lines for `request_id`, once at least one arrived."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [r for r in process.log_records() if r.get("request_id") == request_id]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{process.name}: no line for {request_id}:\n{process.log_text()[-2000:]}")


def test_one_line_per_request_in_each_service_under_the_callers_id(stack):
    request_id = f"obs-{uuid.uuid4().hex[:12]}"
    secret = f"zebra-{uuid.uuid4().hex[:8]}"  # must never reach a log
    status, headers, body = post(
        stack.url + "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Say {secret}."}],
            "max_tokens": 4,
            "ignore_eos": True,
        },
        {"X-Request-Id": request_id},
    )
    assert status == 200 and headers["X-Request-Id"] == request_id
    usage = body["usage"]

    (router,) = [r for r in lines_with(stack.router, request_id) if r["logger"] == "router.requests"]
    assert router["service"] == "router" and router["level"] == "INFO"
    assert router["message"] == "POST /v1/chat/completions 200"
    assert router["status"] == 200 and router["model"] == MODEL and router["engine"].startswith("127.0.0.1:")
    assert router["prompt_tokens"] == usage["prompt_tokens"] and router["completion_tokens"] == 4
    assert 0 < router["ttft_ms"] <= router["duration_ms"]

    (engine,) = lines_with(stack.engine, request_id)
    assert engine["service"] == "engine" and engine["message"] == "generate finished"
    assert engine["engine_request_id"].startswith("chatcmpl-")
    assert engine["status"] == "OK" and engine["finish_reason"] == "length"
    assert engine["prompt_tokens"] == usage["prompt_tokens"] and engine["completion_tokens"] == 4
    assert 0 <= engine["queue_ms"] and 0 < engine["ttft_ms"] <= engine["e2e_ms"]

    (tokenizer,) = lines_with(stack.tokenizer, request_id)
    assert tokenizer["rpc"] == "Encode" and tokenizer["status"] == "OK"
    assert tokenizer["tokens"] == usage["prompt_tokens"]

    for process in stack.processes:
        assert secret not in process.log_text(), f"prompt text in the {process.name} log"


def test_a_request_id_is_made_when_the_client_sends_none_and_bad_ones_are_replaced(stack):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    made = post(stack.url + "/v1/completions", body)[1]["X-Request-Id"]
    assert len(made) == 32 and int(made, 16) >= 0
    lines_with(stack.engine, made)
    replaced = post(stack.url + "/v1/completions", body, {"X-Request-Id": "no spaces allowed"})[1]
    assert len(replaced["X-Request-Id"]) == 32


def test_errors_are_logged_with_their_status(stack):
    request_id = f"obs-bad-{uuid.uuid4().hex[:8]}"
    body = {"model": "no-such-model", "prompt": "Hi"}
    status, _, _ = post(stack.url + "/v1/completions", body, {"X-Request-Id": request_id})
    assert status == 404
    (line,) = lines_with(stack.router, request_id)
    assert line["status"] == 404 and "model" not in line


def test_the_engine_logs_its_stats_while_busy(stack):
    stack.client().completions.create(model=MODEL, prompt="Count to ten", max_tokens=8)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = [r for r in stack.engine.log_records() if r["logger"] == "engine_service.stats"]
        if any(r["generation_tokens_per_s"] > 0 for r in stats):
            break
        time.sleep(0.2)
    line = next(r for r in stats if r["generation_tokens_per_s"] > 0)
    assert line["message"].startswith("engine stats: prompt ")
    assert {"num_running", "num_waiting", "kv_cache_usage", "prefix_cache_hit_rate"} <= line.keys()
