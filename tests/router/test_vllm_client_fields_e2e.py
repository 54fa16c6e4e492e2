"""vLLM's request extensions that its own clients send (found by running vLLM's OpenAI-server tests against
`pagoda serve`), end to end against real processes (tokenizer, one CPU engine with a tiny random Llama and
SmolLM2's tokenizer, router): `return_tokens_as_token_ids`, `truncate_prompt_tokens` and `truncation_side`
(openai SDK); `/tokenize` with `tools` and `return_token_strs`; `/v1/chat/completions/batch`;
`/invocations`."""

from __future__ import annotations

import json

import openai
import pytest
from api_stack import ApiStack, post_json

MODEL = "tiny-vllm-fields"


@pytest.fixture(scope="module")
def stack(tiny_chat_model_dir, tmp_path_factory):
    s = ApiStack(
        tiny_chat_model_dir,
        tmp_path_factory.mktemp("vllm-fields"),
        MODEL,
        ["--max-model-len", "512", "--num-kv-blocks", "64", "--block-size", "16"],
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def token_id(name: str) -> int:
    assert name.startswith("token_id:"), name
    return int(name.removeprefix("token_id:"))


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_name_tokens_by_id(stack, stream):
    """Echoed prompt and completion, tokens and top_logprobs keys "token_id:N" (the first prompt token's
    too), the ids those of the prompt and of the completion; text_offset still indexes the text."""
    prompt = "Say 'Hello, world! 🎉'"
    common = dict(model=MODEL, prompt=prompt, echo=True, temperature=0, max_tokens=6, logprobs=1)
    body = {"return_tokens_as_token_ids": True, "return_token_ids": True}
    client = stack.client()
    if stream:
        tokens, tops, offsets, text, prompt_ids, completion_ids = [], [], [], "", None, []
        for chunk in client.completions.create(**common, stream=True, extra_body=body):
            c = chunk.choices[0]
            text += c.text
            completion_ids += getattr(c, "token_ids", None) or []
            prompt_ids = getattr(c, "prompt_token_ids", None) or prompt_ids  # on the opening chunk
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                tops += c.logprobs.top_logprobs
                offsets += c.logprobs.text_offset
    else:
        c = client.completions.create(**common, extra_body=body).choices[0]
        tokens, tops, offsets, text = (
            c.logprobs.tokens,
            c.logprobs.top_logprobs,
            c.logprobs.text_offset,
            c.text,
        )
        prompt_ids, completion_ids = c.prompt_token_ids, c.token_ids
    assert [token_id(t) for t in tokens] == list(prompt_ids) + list(completion_ids)
    assert tops[0] is None  # the first token has no context
    for name, top in zip(tokens[1:], tops[1:], strict=True):
        assert name in top and all(key.startswith("token_id:") for key in top)
    assert offsets[0] == 0 and offsets == sorted(offsets) and len(offsets) == len(tokens)
    assert text.startswith(prompt)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_name_tokens_by_id(stack, stream):
    common = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Please write some emojis: 🐱🐶🎉"}],
        temperature=0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )
    client = stack.client()
    if stream:
        items, ids = [], []
        for chunk in client.chat.completions.create(**common, stream=True):
            for c in chunk.choices:
                items += c.logprobs.content if c.logprobs else []
                ids += getattr(c, "token_ids", None) or []
    else:
        c = client.chat.completions.create(**common).choices[0]
        items, ids = c.logprobs.content, c.token_ids
    assert [token_id(i.token) for i in items] == ids and len(ids) == 6
    for item in items:
        assert item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 2 and all(t.token.startswith("token_id:") for t in item.top_logprobs)


def test_logprobs_name_tokens_by_text_by_default(stack):
    c = stack.client().completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logprobs=1
    )
    assert "".join(c.choices[0].logprobs.tokens) == c.choices[0].text


def test_truncate_prompt_tokens_keeps_the_end_or_the_start(stack):
    client = stack.client()
    ids = list(range(100, 120))
    common = dict(model=MODEL, prompt=ids, max_tokens=1, temperature=0)
    for side, kept in ((None, ids[-4:]), ("left", ids[-4:]), ("right", ids[:4])):
        body = {"return_token_ids": True, "truncate_prompt_tokens": 4}
        if side:
            body["truncation_side"] = side
        r = client.completions.create(**common, extra_body=body)
        assert r.choices[0].prompt_token_ids == kept and r.usage.prompt_tokens == 4
    r = client.completions.create(
        **common, extra_body={"return_token_ids": True, "truncate_prompt_tokens": -1}
    )
    assert r.choices[0].prompt_token_ids == ids  # -1: the model's context, which it fits


def test_truncate_prompt_tokens_on_text_chat_and_echo(stack):
    client = stack.client()
    full = client.completions.create(
        model=MODEL,
        prompt="one two three four five six seven",
        max_tokens=1,
        extra_body={"return_token_ids": True},
    ).choices[0]
    r = client.completions.create(
        model=MODEL,
        prompt="one two three four five six seven",
        max_tokens=1,
        echo=True,
        logprobs=0,
        extra_body={"return_token_ids": True, "truncate_prompt_tokens": 3},
    ).choices[0]
    assert r.prompt_token_ids == full.prompt_token_ids[-3:]
    assert len(r.logprobs.tokens) == 4 and r.text.startswith(
        "".join(r.logprobs.tokens[:3])
    )  # the echo is cut
    messages = [{"role": "user", "content": "a fairly long message that the template wraps in its markers"}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, extra_body={"return_token_ids": True}
    )
    cut = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=1,
        extra_body={"return_token_ids": True, "truncate_prompt_tokens": 5},
    )
    assert cut.prompt_token_ids == whole.prompt_token_ids[-5:] and cut.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    "body",
    [
        {"truncate_prompt_tokens": 0},
        {"truncate_prompt_tokens": -2},
        {"truncate_prompt_tokens": "4"},
        {"truncate_prompt_tokens": 4, "truncation_side": "middle"},
        {"truncate_prompt_tokens": 513},  # over the model's context (512)
    ],
)
def test_truncate_prompt_tokens_refusals_name_the_field(stack, body):
    with pytest.raises(openai.BadRequestError) as err:
        stack.client().completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=1, extra_body=body)
    assert err.value.body["param"] in body


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def test_tokenize_returns_token_strs_as_vllm(stack, hf_tokenizer):
    prompt = "This is a token_strs test prompt! 🎉"
    status, body = post_json(stack.url + "/tokenize", {"model": MODEL, "prompt": prompt})
    assert status == 200 and body["token_strs"] is None  # vLLM's field, null unless asked
    status, body = post_json(
        stack.url + "/tokenize", {"model": MODEL, "prompt": prompt, "return_token_strs": True}
    )
    ids = hf_tokenizer.encode(prompt)
    assert status == 200 and body["tokens"] == ids
    assert body["token_strs"] == hf_tokenizer.convert_ids_to_tokens(ids)
    messages = [{"role": "user", "content": "Hi there!"}]
    status, body = post_json(
        stack.url + "/tokenize", {"model": MODEL, "messages": messages, "return_token_strs": True}
    )
    assert status == 200 and body["token_strs"] == hf_tokenizer.convert_ids_to_tokens(body["tokens"])


def test_tokenize_renders_tools_as_chat_does(stack):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "What's the weather like in Paris today?"}]
    status, body = post_json(stack.url + "/tokenize", {"model": MODEL, "messages": messages, "tools": tools})
    assert status == 200, body
    chat = stack.client().chat.completions.create(
        model=MODEL, messages=messages, tools=tools, max_tokens=1, extra_body={"return_token_ids": True}
    )
    assert body["tokens"] == chat.prompt_token_ids  # the prompt chat would run, tools described
    _, bare = post_json(stack.url + "/tokenize", {"model": MODEL, "messages": messages})
    assert len(bare["tokens"]) < len(body["tokens"])
    status, body = post_json(stack.url + "/tokenize", {"model": MODEL, "prompt": "hi", "tools": tools})
    assert status == 400 and body["error"]["param"] == "tools"


def test_chat_batch_answers_each_conversation_as_its_own_chat(stack):
    """vLLM's /v1/chat/completions/batch: choice c answers conversation c, as chat would alone (greedy)."""
    conversations = [
        [{"role": "user", "content": "Reply with exactly the word: alpha"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is fire cold?"}],
    ]
    common = {"model": MODEL, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    common["return_token_ids"] = True
    status, body = post_json(stack.url + "/v1/chat/completions/batch", {**common, "messages": conversations})
    assert status == 200, body
    assert body["object"] == "chat.completion" and [c["index"] for c in body["choices"]] == [0, 1]
    for conversation, choice in zip(conversations, body["choices"], strict=True):
        _, alone = post_json(stack.url + "/v1/chat/completions", {**common, "messages": conversation})
        assert choice["message"] == alone["choices"][0]["message"]
        assert choice["token_ids"] == alone["choices"][0]["token_ids"]
        assert choice["prompt_token_ids"] == alone["prompt_token_ids"]  # each conversation's own prompt
        assert not any(e["token"].startswith("token_id:") for e in choice["logprobs"]["content"])
    assert body["usage"]["prompt_tokens"] == sum(len(c["prompt_token_ids"]) for c in body["choices"])
    status, body = post_json(
        stack.url + "/v1/chat/completions/batch",
        {**common, "messages": conversations, "n": 2, "return_tokens_as_token_ids": True},
    )
    assert status == 200 and len(body["choices"]) == 4
    assert all(e["token"].startswith("token_id:") for c in body["choices"] for e in c["logprobs"]["content"])


def test_chat_batch_with_a_json_schema_constrains_every_conversation(stack):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    status, body = post_json(
        stack.url + "/v1/chat/completions/batch",
        {
            "model": MODEL,
            "messages": [
                [{"role": "user", "content": "Is the sky blue?"}],
                [{"role": "user", "content": "Is fire cold?"}],
            ],
            "max_tokens": 40,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        },
    )
    assert status == 200, body
    assert [json.loads(c["message"]["content"])["answer"] in ("yes", "no") for c in body["choices"]] == [
        True
    ] * 2


@pytest.mark.parametrize(
    "extra, param",
    [
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "messages",
        ),  # one conversation, not a list of them
        ({"messages": []}, "messages"),
        ({"stream": True}, "stream"),
        ({"echo": True}, "echo"),
        ({"prompt_logprobs": 0}, "prompt_logprobs"),
    ],
)
def test_chat_batch_refusals_name_the_field(stack, extra, param):
    body = {"model": MODEL, "messages": [[{"role": "user", "content": "hi"}]], "max_tokens": 2, **extra}
    status, error = post_json(stack.url + "/v1/chat/completions/batch", body)
    assert status == 400 and error["error"]["param"] == param, error


def test_invocations_answers_as_the_route_its_body_names(stack):
    """SageMaker's /invocations (vLLM serves it): a chat body is answered as /v1/chat/completions would, a
    completions body as /v1/completions; a body that names neither is a 400."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "what is 1+1?"}], "max_tokens": 5}
    completion = {"model": MODEL, "prompt": "1 + 1 =", "max_tokens": 5}
    for route, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        body = {**body, "temperature": 0}
        status, direct = post_json(stack.url + route, body)
        status_inv, invoked = post_json(stack.url + "/invocations", body)
        assert status == status_inv == 200, invoked
        assert invoked["object"] == direct["object"] and invoked["choices"] == direct["choices"]
    status, error = post_json(stack.url + "/invocations", {"model": MODEL})
    assert status == 400 and "/invocations" in error["error"]["message"]


def test_chat_stream_sends_prompt_token_ids_on_its_first_chunk_top_level(stack):
    """vLLM's return_token_ids on a chat stream: prompt_token_ids at the top level of the first chunk only
    (where vLLM's clients read it), each choice's token_ids on its content chunks."""
    common = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Say 🎉"}],
        max_tokens=5,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    client = stack.client()
    whole = client.chat.completions.create(**common)
    chunks = [c.model_dump() for c in client.chat.completions.create(**common, stream=True)]
    assert chunks[0]["prompt_token_ids"] == whole.prompt_token_ids
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    assert all("prompt_token_ids" not in choice for c in chunks for choice in c["choices"])
    ids = [t for c in chunks for choice in c["choices"] for t in choice.get("token_ids") or []]
    assert ids == whole.choices[0].token_ids


def test_chat_batch_reads_the_shared_fields_once():
    """A batch of the most conversations with the largest tools list: the tools (and every other shared
    field) are parsed once and shared, not once per conversation (256 x 1 MiB of tools JSON otherwise)."""
    from router.api.openai_schema import MAX_PROMPTS, parse_chat_batch
    from router.errors import OpenAIError

    described = {"description": "x" * 7000}
    tools = [{"type": "function", "function": {"name": f"f{i}", **described}} for i in range(128)]
    body = {
        "model": MODEL,
        "messages": [[{"role": "user", "content": f"hi {i}"}] for i in range(MAX_PROMPTS)],
        "tools": tools,
    }
    reqs = parse_chat_batch(body)
    assert len(reqs) == MAX_PROMPTS and len(reqs[0].tools.tools_json) > 800_000
    assert all(r.tools is reqs[0].tools and r.sampling is reqs[0].sampling for r in reqs)
    assert [r.messages[0].content for r in reqs[:3]] == ["hi 0", "hi 1", "hi 2"]
    with pytest.raises(OpenAIError) as info:
        parse_chat_batch({**body, "messages": body["messages"] + [[{"role": "user", "content": "x"}]]})
    assert info.value.status == 400 and info.value.param == "messages"
