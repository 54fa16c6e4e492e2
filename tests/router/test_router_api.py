"""The OpenAI API through the openai SDK: response shapes, streaming, n, stop, logprobs, seeds, usage."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from router_fakes import Script, encode

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
REPLY = Script().reply
PROMPT_LEN = len(encode("<|system|>Be brief.\n<|user|>Hi there\n<|assistant|>"))


async def test_chat_completion_shape_and_usage(stack):
    r = await stack.client().chat.completions.create(model="scripted", messages=MESSAGES)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "scripted"
    assert r.created > 0
    [choice] = r.choices
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant", REPLY)
    assert choice.finish_reason == "stop" and choice.logprobs is None
    # Every reply byte is a token, plus EOS.
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (PROMPT_LEN, len(REPLY) + 1)
    assert r.usage.total_tokens == PROMPT_LEN + len(REPLY) + 1
    # The chat template saw the messages as sent.
    [req] = stack.tokenizer.requests
    assert [(m.role, m.content) for m in req.chat.messages] == [("system", "Be brief."), ("user", "Hi there")]


async def test_chat_stream_role_first_then_content_then_finish_and_usage(stack):
    stream = await stack.client().chat.completions.create(
        model="scripted", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert "".join(content) == REPLY and all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    # include_usage: a last chunk with no choices and exact counts; usage is null on every other chunk.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(REPLY) + 1
    assert all(c.usage is None for c in chunks[:-1])


async def test_raw_sse_format_ends_with_done(stack):
    body = {"model": "scripted", "messages": MESSAGES, "stream": True, "max_tokens": 3}
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert "usage" not in last  # no include_usage: no usage key at all
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]


async def test_n2_streams_both_choices(stack):
    stream = await stack.client().chat.completions.create(
        model="scripted", messages=MESSAGES, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts, finish = {0: "", 1: ""}, {}
    roles = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage:
            assert chunk.usage.completion_tokens == 2 * (len(REPLY) + 1)
    assert roles == [0, 1] and texts == {0: REPLY, 1: REPLY} and finish == {0: "stop", 1: "stop"}


async def test_max_tokens_gives_length(stack):
    client = stack.client()
    r = await client.chat.completions.create(model="scripted", messages=MESSAGES, max_tokens=5)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (REPLY[:5], "length")
    assert r.usage.completion_tokens == 5
    r = await client.chat.completions.create(model="scripted", messages=MESSAGES, max_completion_tokens=3)
    assert r.choices[0].message.content == REPLY[:3]
    assert stack.engines[0].requests[-1].sampling_params.max_tokens == 3


async def test_stop_strings(stack):
    client = stack.client()
    r = await client.chat.completions.create(model="scripted", messages=MESSAGES, stop=["from", "engine"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Hello ", "stop")
    assert list(stack.engines[0].requests[-1].sampling_params.stop) == ["from", "engine"]
    r = await client.completions.create(
        model="scripted", prompt="x", stop="from", extra_body={"include_stop_str_in_output": True}
    )
    assert r.choices[0].text == "Hello from"


async def test_chat_logprobs(stack):
    r = await stack.client().chat.completions.create(
        model="scripted", messages=MESSAGES, max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == ["H", "e", "l"]
    assert content[0].logprob == -0.25 and content[0].bytes == [ord("H")]
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("H", -0.25), ("I", -0.5)]
    assert stack.engines[0].requests[-1].sampling_params.logprobs == 2


async def test_chat_logprobs_stream(stack):
    stream = await stack.client().chat.completions.create(
        model="scripted", messages=MESSAGES, max_tokens=2, logprobs=True, stream=True
    )
    tokens = [t.token async for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content]
    assert tokens == ["H", "e"]


async def test_completions_logprobs_and_text_offsets(stack):
    r = await stack.client().completions.create(model="scripted", prompt="Say", max_tokens=4, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["H", "e", "l", "l"] and lp.text_offset == [0, 1, 2, 3]
    assert lp.token_logprobs == [-0.25] * 4 and lp.top_logprobs[0] == {"H": -0.25}


async def test_seeded_requests_reproduce(stack):
    client = stack.client()

    async def run(seed):
        r = await client.chat.completions.create(
            model="scripted", messages=MESSAGES, seed=seed, temperature=1.0
        )
        return r.choices[0].message.content

    a, b, c = await run(7), await run(7), await run(8)
    assert a == b and a != c
    assert stack.engines[0].requests[-1].sampling_params.seed == 8


async def test_every_int64_seed_reaches_the_engine_as_sent(stack):
    client = stack.client()
    for seed in (-1, 2**63 - 1, -(2**63)):
        await client.chat.completions.create(model="scripted", messages=MESSAGES, seed=seed, max_tokens=2)
        assert stack.engines[0].requests[-1].sampling_params.seed == seed


async def test_sampling_fields_reach_the_engine(stack):
    await stack.client().chat.completions.create(
        model="scripted",
        messages=MESSAGES,
        temperature=0.5,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"5": 10, "7": -100},
        seed=-1,
        user="alice",
        extra_body={
            "top_k": 40,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "min_tokens": 2,
            "ignore_eos": True,
            "stop_token_ids": [9],
            "skip_special_tokens": False,
            "max_tokens": 4,
        },
    )
    p = stack.engines[0].requests[-1].sampling_params
    assert p.temperature == pytest.approx(0.5) and p.top_p == pytest.approx(0.9) and p.top_k == 40
    assert p.min_p == pytest.approx(0.05) and p.repetition_penalty == pytest.approx(1.1)
    assert p.presence_penalty == pytest.approx(0.5) and p.frequency_penalty == pytest.approx(-0.5)
    assert dict(p.logit_bias) == {5: 10.0, 7: -100.0} and p.seed == -1
    assert (p.min_tokens, p.ignore_eos, list(p.stop_token_ids), p.skip_special_tokens) == (
        2,
        True,
        [9],
        False,
    )
    assert not p.HasField("logprobs")


async def test_completions_prompt_forms_and_indexes(stack):
    client = stack.client()
    r = await client.completions.create(model="scripted", prompt="Hello", max_tokens=2)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.choices[0].text == "He"
    assert list(stack.engines[0].requests[-1].prompt_token_ids.ids) == [1, *encode("Hello")]  # BOS + bytes
    r = await client.completions.create(model="scripted", prompt=[5, 6, 7], max_tokens=2)
    assert list(stack.engines[0].requests[-1].prompt_token_ids.ids) == [5, 6, 7]
    assert r.usage.prompt_tokens == 3
    r = await client.completions.create(model="scripted", prompt=[[5, 6], [7, 8, 9]], max_tokens=2, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 8)
    r = await client.completions.create(model="scripted", prompt=["a", "b"], max_tokens=1)
    assert [c.text for c in r.choices] == ["H", "H"]


async def test_completions_stream_multi_prompt_with_echo(stack):
    stream = await stack.client().completions.create(
        model="scripted",
        prompt=["ab", "cd"],
        max_tokens=3,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finish, usage = {0: "", 1: ""}, {}, None
    async for chunk in stream:
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == {0: "abHel", 1: "cdHel"} and finish == {0: "length", 1: "length"}
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 6)


async def test_echo_of_token_ids_decodes_them(stack):
    r = await stack.client().completions.create(
        model="scripted", prompt=encode("hey"), max_tokens=1, echo=True
    )
    assert r.choices[0].text == "heyH"


async def test_models_list_and_retrieve(stack):
    client = stack.client()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["scripted"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "pagoda"
    assert (await client.models.retrieve("scripted")).id == "scripted"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_tokenize_and_detokenize(stack):
    status, body, _ = await stack.post("/tokenize", {"model": "scripted", "prompt": "hi"})
    assert status == 200 and body == {
        "count": 3,
        "max_model_len": 512,
        "tokens": [1, *encode("hi")],
        "token_strs": None,
    }
    status, body, _ = await stack.post("/tokenize", {"model": "scripted", "messages": MESSAGES})
    assert status == 200 and body["count"] == PROMPT_LEN
    status, body, _ = await stack.post("/detokenize", {"model": "scripted", "tokens": encode("hey")})
    assert status == 200 and body == {"prompt": "hey"}
    status, body, _ = await stack.post("/tokenize", {"model": "scripted"})
    assert status == 400 and "exactly one" in body["error"]["message"]


async def test_health_version_metrics(stack):
    status, body, _ = await stack.get("/health")
    assert status == 200 and body["engines_ready"] == 1
    status, body, _ = await stack.get("/version")
    assert status == 200 and body["version"]
    await stack.client().chat.completions.create(model="scripted", messages=MESSAGES)
    status, text, headers = await stack.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    route = 'model="scripted",route="/v1/chat/completions"'
    assert f'pagoda_router_requests_total{{{route},status="200"}} 1.0' in text
    assert 'pagoda_router_time_to_first_token_seconds_count{model="scripted"} 1.0' in text
    assert f'pagoda_router_generation_tokens_total{{model="scripted"}} {len(REPLY) + 1}.0' in text
    assert 'pagoda_router_engine_ready{engine="127.0.0.1:' in text
