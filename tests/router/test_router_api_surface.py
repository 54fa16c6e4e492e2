"""The request fields clients send by default, against the scripted stack: what reaches the engine and the
tokenizer, and the shapes that come back (echo + logprobs, vLLM's prompt_logprobs, suffix, reasoning_effort,
continuous usage, the template of a Responses request)."""

from __future__ import annotations

import json

import pytest
from router_fakes import BOS, encode


async def test_echo_with_logprobs_asks_the_engine_for_prompt_logprobs(stack):
    r = await stack.client().completions.create(
        model="scripted", prompt="hey", max_tokens=2, echo=True, logprobs=1
    )
    assert stack.engines[0].requests[-1].sampling_params.prompt_logprobs == 1
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "heyHe"
    assert lp.tokens == ["<s>", "h", "e", "y", "H", "e"]  # each token's own text, specials too (as vLLM)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == [-0.25] * 5
    assert lp.text_offset == [0, 3, 4, 5, 6, 7]


async def test_max_tokens_zero_echo_is_the_prompt_alone(stack):
    r = await stack.client().completions.create(
        model="scripted", prompt=[5, 6, 7], max_tokens=0, echo=True, logprobs=0
    )
    assert stack.engines[0].requests[-1].sampling_params.max_tokens == 1
    choice = r.choices[0]
    assert choice.finish_reason == "length" and len(choice.logprobs.tokens) == 3
    assert r.usage.completion_tokens == 0 and r.usage.total_tokens == r.usage.prompt_tokens == 3


async def test_vllm_prompt_logprobs_shape(stack):
    r = await stack.client().completions.create(
        model="scripted", prompt=[10, 11, 12], max_tokens=1, extra_body={"prompt_logprobs": 2}
    )
    plp = r.choices[0].model_dump()["prompt_logprobs"]
    assert plp[0] is None and len(plp) == 3
    assert plp[1]["11"] == {
        "logprob": -0.25,
        "rank": 1,
        "decoded_token": "\x08",
    }  # the token is its own top 1
    assert set(plp[1]) == {"11", "12"} and plp[1]["12"]["rank"] == 2


async def test_suffix_fills_in_the_middle_with_the_tokenizer_fim_tokens(stack):
    stack.tokenizer.fim = ("<P>", "<S>", "<M>")
    await stack.client().completions.create(
        model="scripted", prompt="def f(", suffix="  return 1", max_tokens=1
    )
    ids = list(stack.engines[0].requests[-1].prompt_token_ids.ids)
    assert ids == [BOS, *encode("<P>def f(<S>  return 1<M>")]


async def test_reasoning_effort_sets_the_template_switch(stack):
    client = stack.client()
    messages = [{"role": "user", "content": "hi"}]
    await client.chat.completions.create(
        model="scripted", messages=messages, max_tokens=1, reasoning_effort="none"
    )
    kwargs = json.loads(stack.tokenizer.requests[-1].chat.chat_template_kwargs_json)
    assert kwargs == {"enable_thinking": False, "reasoning_effort": "none"}
    await client.chat.completions.create(
        model="scripted",
        messages=messages,
        max_tokens=1,
        reasoning_effort="high",
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    kwargs = json.loads(stack.tokenizer.requests[-1].chat.chat_template_kwargs_json)
    assert kwargs == {"enable_thinking": False, "reasoning_effort": "high"}  # the request's own wins


@pytest.mark.parametrize(
    "field,value",
    [("store", True), ("service_tier", "fast"), ("reasoning_effort", "max"), ("verbosity", 3), ("audio", {})],
)
async def test_fields_that_would_be_silently_wrong_are_400(stack, field, value):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "x"}], field: value}
    status, err, _ = await stack.post("/v1/chat/completions", body)
    assert status == 400 and err["error"]["param"] == field, err


async def test_continuous_usage_needs_include_usage(stack):
    stream = await stack.client().completions.create(
        model="scripted",
        prompt="a",
        max_tokens=3,
        stream=True,
        stream_options={"continuous_usage_stats": True},
    )
    assert all(c.usage is None for c in [c async for c in stream])


async def test_chat_echo_puts_the_final_assistant_message_first(stack):
    """vLLM's chat `echo`: the assistant message the reply continues comes before each choice's content,
    streamed (on the opening chunk) and not; a final user message is never echoed."""
    client = stack.client()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "An apple a day"}]
    flags = {"continue_final_message": True, "add_generation_prompt": False}
    kw = dict(model="scripted", messages=messages, max_tokens=2)
    plain = await client.chat.completions.create(**kw, extra_body=flags)
    echoed = await client.chat.completions.create(**kw, extra_body={**flags, "echo": True})
    assert echoed.choices[0].message.content == "An apple a day" + plain.choices[0].message.content
    stream = await client.chat.completions.create(**kw, extra_body={**flags, "echo": True}, stream=True)
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == echoed.choices[0].message.content
    kw["messages"] = messages[:1]
    user_last = await client.chat.completions.create(**kw, extra_body={"echo": True})
    no_echo = await client.chat.completions.create(**kw)
    assert user_last.choices[0].message.content == no_echo.choices[0].message.content
