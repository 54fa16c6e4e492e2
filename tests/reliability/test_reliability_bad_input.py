"""Bad input to a real router with the real tokenizer and engines: every case is a 4xx in OpenAI's error
format (with the status the case calls for), and the stack serves normally afterwards."""

# ruff: noqa: E501 (the cases read best as one row each)

from __future__ import annotations

import json

import aiohttp
from reliability_client import post
from reliability_stack import MODEL, chat_body

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
JSON_TYPE = {"Content-Type": "application/json"}


def chat(**fields) -> dict:
    return {**chat_body(0, 4, stream=False), **fields}


def raw(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


# (case, path, body (dict: sent as JSON; bytes: sent as is), headers, expected status)
CASES = [
    ("malformed JSON", CHAT, b'{"model": "tiny-llama", "messages": [', JSON_TYPE, 400),
    ("trailing garbage", CHAT, raw(json.dumps(chat()) + "}}"), JSON_TYPE, 400),
    ("empty body", CHAT, b"", JSON_TYPE, 400),
    ("JSON null", CHAT, b"null", JSON_TYPE, 400),
    ("a JSON list", CHAT, b"[1, 2, 3]", JSON_TYPE, 400),
    ("form content type", CHAT, b"model=tiny-llama&prompt=hi", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("text content type", CHAT, raw(json.dumps(chat())), {"Content-Type": "text/plain"}, 415),
    ("multipart content type", CHAT, b"--x\r\n\r\n--x--", {"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ("invalid UTF-8", CHAT, b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON_TYPE, 400),
    ("a UTF-8 BOM", CHAT, b"\xef\xbb\xbf" + raw(json.dumps(chat())), JSON_TYPE, 400),
    ("lone surrogate", CHAT, b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\udc80"}]}', JSON_TYPE, 400),
    ("nested 100,000 deep", CHAT, b"[" * 100_000 + b"]" * 100_000, JSON_TYPE, 400),
    ("objects nested 5,000 deep", CHAT, b'{"a":' * 5000 + b"1" + b"}" * 5000, JSON_TYPE, 400),
    ("chat_template_kwargs nested 40 deep", CHAT, raw(json.dumps(chat(chat_template_kwargs=json.loads('{"a":' * 40 + "1" + "}" * 40)))), JSON_TYPE, 400),
    ("100k-token prompt (text)", CHAT, chat(messages=[{"role": "user", "content": "hello " * 100_000}]), None, 400),
    ("100k-token prompt (ids)", COMPLETIONS, {"model": MODEL, "prompt": [11] * 100_000, "max_tokens": 1}, None, 400),
    ("n=1000", CHAT, chat(n=1000), None, 400),
    ("max_tokens=10^9", CHAT, chat(max_tokens=10**9), None, 400),
    ("max_tokens=-1", CHAT, chat(max_tokens=-1), None, 400),
    ("max_tokens as a string", CHAT, chat(max_tokens="16"), None, 400),
    ("temperature=-1", CHAT, chat(temperature=-1), None, 400),
    ("n=-5", COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": -5}, None, 400),
    ("temperature NaN", CHAT, raw(json.dumps(chat())[:-1] + ', "top_p": NaN}'), JSON_TYPE, 400),
    ("temperature Infinity", CHAT, raw(json.dumps(chat())[:-1] + ', "temperature": Infinity}'), JSON_TYPE, 400),
    ("seed 2^70", CHAT, chat(seed=2**70), None, 400),
    ("logit_bias key not a token", CHAT, chat(logit_bias={"x": 1}), None, 400),
    ("token id past the vocabulary", COMPLETIONS, {"model": MODEL, "prompt": [10**9], "max_tokens": 1}, None, 400),
    ("unknown field", CHAT, chat(frobnicate=True), None, 400),
    ("unknown message field", CHAT, chat(messages=[{"role": "user", "content": "hi", "mood": "x"}]), None, 400),
    ("malformed tool name", CHAT, chat(tools=[{"type": "function", "function": {"name": "f g"}}]), None, 400),
    ("invalid JSON schema", CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}), None, 400),
    ("no messages", CHAT, chat(messages=[]), None, 400),
    ("unknown model", CHAT, chat(model="gpt-9"), None, 404),
    ("cache_salt too long", CHAT, chat(cache_salt="s" * 5000), None, 400),
]  # fmt: skip


async def test_bad_input_gets_a_proper_4xx(stack, tally):
    t = tally(f"bad input: {len(CASES)} malformed, oversized, nested, out-of-range and unknown requests")
    url = stack.routers[0].url
    async with aiohttp.ClientSession() as s:
        for name, path, body, headers, expected in CASES:
            outcome = t.add(await post(s, url + path, body, headers=headers, timeout_s=60))
            assert (outcome.kind, outcome.status) == ("error", expected), (name, outcome)
        # Still serving, streams and all.
        for i in range(4):
            outcome = t.add(await post(s, url + CHAT, chat_body(i, 8)))
            assert outcome.kind == "ok", outcome
    t.figures["statuses"] = ", ".join(
        f"{status}: {sum(1 for c in CASES if c[4] == status)}" for status in sorted({c[4] for c in CASES})
    )
