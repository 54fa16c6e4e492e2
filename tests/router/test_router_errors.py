"""Every client error is a 4xx in OpenAI's format that names the problem; none is a 500."""

from __future__ import annotations

import openai
import pytest
from router_fakes import Script

MSGS = [{"role": "user", "content": "hi"}]


def _chat(**fields):
    return {"model": "scripted", "messages": MSGS, **fields}


BAD_CHAT_BODIES = [
    # (body, param named in the error, a phrase of the message)
    (_chat(temperature=3), "temperature", "<= 2"),
    (_chat(temperature="hot"), "temperature", "a number"),
    (_chat(top_p=0), "top_p", "> 0"),
    (_chat(n=0), "n", ">= 1"),
    (_chat(n=True), "n", "an integer"),
    (_chat(max_tokens=0), "max_tokens", ">= 1"),
    (_chat(max_tokens=2.5), "max_tokens", "an integer"),
    (_chat(presence_penalty=-3), "presence_penalty", ">= -2"),
    (_chat(frequency_penalty=[1]), "frequency_penalty", "a number"),
    (_chat(logit_bias={"x": 1}), "logit_bias", "token ids"),
    (_chat(logit_bias={"5": 101}), "logit_bias", "<= 100"),
    (_chat(logit_bias={"9999": 1}), "logit_bias", "outside the vocabulary"),
    (_chat(stop=[""]), "stop", "empty"),
    (_chat(stop=5), "stop", "a string or a list"),
    (_chat(seed="1"), "seed", "an integer"),
    # OpenAI's seed is a signed 64-bit integer: out of it, the error quotes the number the client sent.
    (_chat(seed=2**63), "seed", "'seed' must be <= 9223372036854775807, got 9223372036854775808."),
    (_chat(seed=-(2**63) - 1), "seed", "'seed' must be >= -9223372036854775808, got -9223372036854775809."),
    (_chat(temperature=2.000001), "temperature", "'temperature' must be <= 2, got 2.000001."),
    (_chat(top_logprobs=2), "top_logprobs", "'logprobs'"),
    (_chat(logprobs=True, top_logprobs=21), "top_logprobs", "<= 20"),
    (_chat(stream_options={"include_usage": True}), "stream_options", "'stream'"),
    (_chat(stream="yes"), "stream", "a boolean"),
    (_chat(top_k=-2), "top_k", ">= -1"),
    (_chat(min_p=2), "min_p", "<= 1"),
    (_chat(repetition_penalty=0), "repetition_penalty", "> 0"),
    (_chat(min_tokens=5, max_tokens=2), "min_tokens", "must not exceed"),
    (_chat(stop_token_ids=[99999]), "stop_token_ids", "outside the vocabulary"),
    (_chat(chat_template_kwargs="x"), "chat_template_kwargs", "an object"),
    (_chat(bogus=1), "bogus", "Unrecognized request argument"),
    (_chat(max_tokens=600), "messages", "maximum context length is 512"),
    ({"model": "scripted"}, "messages", "non-empty list"),
    ({"model": "scripted", "messages": []}, "messages", "non-empty list"),
    ({"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}, "messages", "role"),
    ({"model": "scripted", "messages": [{"role": "user", "content": 5}]}, "messages", "content"),
    ({"model": "scripted", "messages": ["hi"]}, "messages", "object"),
    ({"messages": MSGS}, "model", "'model' is required"),
    # Known OpenAI features we do not serve yet: a 400 that says so.
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "not supported yet"),
    (_chat(functions=[{"name": "f"}]), "functions", "not supported yet"),
    (_chat(response_format={"type": "json_object"}), "response_format", "not supported yet"),
    (_chat(tool_choice="required"), "tool_choice", "not supported yet"),
    (_chat(audio={"voice": "x"}), "audio", "not supported yet"),
    (
        {
            "model": "scripted",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        "messages[0].content[0].type",
        "not supported yet",
    ),
]


@pytest.mark.parametrize("body,param,phrase", BAD_CHAT_BODIES)
async def test_bad_chat_bodies_are_400_naming_the_field(stack, body, param, phrase):
    status, err, _ = await stack.post("/v1/chat/completions", body)
    assert status == 400, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param and phrase in err["error"]["message"]
    assert not stack.engines[0].requests  # nothing reached an engine


@pytest.mark.parametrize(
    "body,phrase",
    [
        ({"model": "scripted"}, "'prompt'"),
        ({"model": "scripted", "prompt": []}, "'prompt'"),
        ({"model": "scripted", "prompt": [1, "a"]}, "must not mix"),
        ({"model": "scripted", "prompt": [[1], []]}, "non-empty list"),
        ({"model": "scripted", "prompt": [-1]}, "non-negative"),
        ({"model": "scripted", "prompt": [300]}, "outside the vocabulary"),
        ({"model": "scripted", "prompt": "x" * 600}, "maximum context length"),
        ({"model": "scripted", "prompt": "x", "logprobs": 21}, "<= 20"),
        ({"model": "scripted", "prompt": "x", "suffix": "y"}, "fill-in-the-middle"),
        ({"model": "scripted", "prompt": [5, 6], "suffix": "y"}, "text prompts"),
        ({"model": "scripted", "prompt": "x", "suffix": "y", "echo": True}, "cannot be combined"),
        ({"model": "scripted", "prompt": "x", "best_of": 1, "n": 2}, "at least n"),
        ({"model": "scripted", "prompt": "x", "best_of": 2, "stream": True}, "cannot be streamed"),
        ({"model": "scripted", "prompt": "x", "max_tokens": 0}, "only with 'echo'"),
        ({"model": "scripted", "prompt": "x", "prompt_logprobs": 1, "stream": True}, "not available"),
        ({"model": "scripted", "prompt": "x", "prompt_logprobs": 21}, "<= 20"),
        ({"model": "scripted", "prompt": "x", "messages": MSGS}, "Unrecognized"),
        ({"model": "scripted", "prompt": "x", "tools": []}, "Unrecognized"),
    ],
)
async def test_bad_completion_bodies_are_400(stack, body, phrase):
    status, err, _ = await stack.post("/v1/completions", body)
    assert status == 400 and phrase in err["error"]["message"], err


async def test_neutral_values_of_unsupported_fields_are_accepted(stack):
    r = await stack.client().chat.completions.create(
        model="scripted",
        messages=MSGS,
        max_tokens=1,
        response_format={"type": "text"},
        tool_choice="none",
        store=False,
        parallel_tool_calls=False,
    )
    assert r.choices[0].finish_reason == "length"


async def test_round_tripped_assistant_message_is_accepted(stack):
    client = stack.client()
    r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
    history = [*MSGS, r.choices[0].message.model_dump(), {"role": "developer", "content": "go on"}]
    await client.chat.completions.create(model="scripted", messages=history, max_tokens=2)
    roles = [m.role for m in stack.tokenizer.requests[-1].chat.messages]
    assert roles == ["user", "assistant", "system"]


async def test_malformed_bodies(stack):
    for data in (b"{not json", b"[1, 2]", b"\xff\xfe", b"null"):
        status, err, _ = await stack.post("/v1/chat/completions", data=data)
        assert status == 400 and err["error"]["type"] == "invalid_request_error", (data, err)


async def test_unknown_model_is_404(stack):
    with pytest.raises(openai.NotFoundError) as info:
        await stack.client().chat.completions.create(model="gpt-9", messages=MSGS)
    assert info.value.body["code"] == "model_not_found" and "gpt-9" in info.value.body["message"]


async def test_unknown_route_and_method_are_openai_errors(stack):
    status, err, _ = await stack.post("/v1/nope", {})
    assert status == 404 and err["error"]["message"] == "Not Found"
    status, err, _ = await stack.get("/v1/chat/completions")
    assert status == 405 and "error" in err


async def test_tokenizer_rejection_is_400(stack):
    status, err, _ = await stack.post(
        "/v1/chat/completions", _chat(messages=[{"role": "tool", "content": "x"}])
    )
    assert status == 400 and "no tool role" in err["error"]["message"]


async def test_engine_invalid_argument_is_400_without_retry(make_stack):
    from grpc import StatusCode

    stack = await make_stack([Script(fail_before_first=StatusCode.INVALID_ARGUMENT)] * 2)
    status, err, _ = await stack.post("/v1/completions", {"model": "scripted", "prompt": [5, 6, 7, 8, 9]})
    assert status == 400 and err["error"]["message"] == "scripted failure"
    # A bad request fails the same way everywhere: it is not retried on the other engine.
    assert sum(len(e.requests) for e in stack.engines) == 1


async def test_no_engine_ready_is_503(make_stack):
    stack = await make_stack([Script(hang=True)], wait_ready=False)
    status, err, _ = await stack.get("/health")
    assert status == 503
    status, err, _ = await stack.post("/v1/chat/completions", _chat())
    assert status == 503 and err["error"]["type"] == "server_error"


async def test_engine_pushback_is_429_with_retry_after(make_stack):
    from grpc import StatusCode

    stack = await make_stack([Script(fail_before_first=StatusCode.RESOURCE_EXHAUSTED)] * 2)
    status, err, headers = await stack.post("/v1/chat/completions", _chat())
    assert status == 429 and headers["Retry-After"] == "1" and err["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.engines[0].requests) == len(stack.engines[1].requests) == 1  # both were tried


async def test_api_keys(make_stack, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated daily\nfile-key-1\n\n")
    stack = await make_stack(api_keys=("flag-key",), api_key_file=str(key_file))
    for key in ("flag-key", "file-key-1"):
        r = await stack.client(api_key=key).chat.completions.create(
            model="scripted", messages=MSGS, max_tokens=1
        )
        assert r.choices
    for key in ("wrong", "flag-key-and-more", "# rotated daily"):
        with pytest.raises(openai.AuthenticationError) as info:
            await stack.client(api_key=key).models.list()
        assert info.value.body["code"] == "invalid_api_key"
    status, err, _ = await stack.post("/v1/completions", {"model": "scripted", "prompt": "x"})
    assert status == 401 and "didn't provide an API key" in err["error"]["message"]
    # Probes and scrapers need no key.
    assert (await stack.get("/health"))[0] == 200 and (await stack.get("/metrics"))[0] == 200
    # The key file is re-read when it changes.
    import asyncio
    import os

    key_file.write_text("file-key-2\n")
    os.utime(key_file, (1, 1))
    ok = False
    for _ in range(100):
        await asyncio.sleep(0.05)
        try:
            await stack.client(api_key="file-key-2").models.list()
            ok = True
            break
        except openai.AuthenticationError:
            pass
    assert ok, "the new key from the file was never accepted"
    with pytest.raises(openai.AuthenticationError):
        await stack.client(api_key="file-key-1").models.list()


NASTY = [None, True, False, -1, 0, 2**70, -(2**70), 1e308, -1e-308, "x", "", [], [1], ["a"], {}, {"a": 1}]
CHAT_FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "skip_special_tokens",
    "include_stop_str_in_output",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template",
    "cache_salt",
    "tools",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "metadata",
    "service_tier",
]
COMPLETION_FIELDS = [
    "prompt",
    "echo",
    "logprobs",
    "best_of",
    "suffix",
    "max_tokens",
    "n",
    "seed",
    "min_tokens",
    "stop_token_ids",
    "logit_bias",
    "top_k",
]


async def test_no_field_value_gives_a_500(stack):
    """Every known field set to every kind of wrong value: a 200 or a 4xx in OpenAI's format, never a 500."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for path, fields, base in (
            ("/v1/chat/completions", CHAT_FIELDS, {"model": "scripted", "messages": MSGS, "max_tokens": 2}),
            ("/v1/completions", COMPLETION_FIELDS, {"model": "scripted", "prompt": "x", "max_tokens": 2}),
        ):
            for field in fields:
                for value in NASTY:
                    async with session.post(stack.url + path, json={**base, field: value}) as r:
                        body = await r.read()
                        assert r.status == 200 or (400 <= r.status < 500 and b'"error"' in body), (
                            field,
                            value,
                            body,
                        )
        bodies = []
        for v in NASTY:
            bodies += [
                ("/v1/chat/completions", {"model": "scripted", "messages": [{"role": "user", "content": v}]}),
                ("/v1/chat/completions", {"model": "scripted", "messages": [{"role": v, "content": "x"}]}),
                (
                    "/v1/chat/completions",
                    {"model": "scripted", "messages": [{"role": "user", "content": [v]}]},
                ),
                (
                    "/v1/chat/completions",
                    {"model": "scripted", "messages": [{"role": "user", "content": "x", "name": v}]},
                ),
                ("/v1/chat/completions", {"model": "scripted", "messages": [v]}),
                ("/v1/completions", {"model": "scripted", "prompt": [[v]], "max_tokens": 1}),
                ("/v1/completions", {"model": "scripted", "prompt": [v], "max_tokens": 1}),
                ("/v1/completions", {"model": v, "prompt": "x"}),
                (
                    "/v1/completions",
                    {"model": "scripted", "prompt": "x", "stream": True, "stream_options": v},
                ),
                ("/tokenize", {"model": "scripted", "prompt": v}),
                ("/tokenize", {"model": "scripted", "messages": v}),
                ("/detokenize", {"model": "scripted", "tokens": v}),
                ("/detokenize", {"model": "scripted", "tokens": [v]}),
            ]
        for path, body in bodies:
            async with session.post(stack.url + path, json=body) as r:
                data = await r.read()
                assert r.status == 200 or (400 <= r.status < 500 and b'"error"' in data), (path, body, data)
    # Special floats that JSON parsers accept.
    for raw in (
        b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b'{"model": "scripted", "prompt": "x", "top_p": Infinity}',
    ):
        path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
        status, err, _ = await stack.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert status == 400 and "a number" in err["error"]["message"]
