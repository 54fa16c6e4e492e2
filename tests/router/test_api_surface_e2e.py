"""The API surface real clients use, end to end against real processes (tokenizer, one CPU engine with a tiny
random Llama and SmolLM2's tokenizer, router) through the openai SDK: lm-eval's loglikelihood requests (echo +
logprobs, max_tokens 1 and 0) against transformers' log-softmax with prefix caching on, chunked prefill at 16
tokens and a cached prefix; completions logprobs; continuous usage; best_of; vLLM's prompt_logprobs and
return_token_ids; the fields accepted and ignored."""

from __future__ import annotations

import openai
import pytest
import torch
from api_stack import ApiStack, post_json
from router_processes import http_text

MODEL = "tiny-api"
CONTEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods. " * 2


@pytest.fixture(scope="module")
def stack(tiny_chat_model_dir, tmp_path_factory):
    s = ApiStack(
        tiny_chat_model_dir,
        tmp_path_factory.mktemp("api-surface"),
        MODEL,
        ["--max-model-len", "512", "--num-kv-blocks", "128", "--block-size", "16"]
        + ["--max-num-batched-tokens", "16", "--max-num-seqs", "16"],  # chunked prefill at 16 tokens
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def hf(tiny_chat_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: row p is the distribution of token p + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def check_echo(choice, ids, ref, tokenizer, max_tokens):
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + max_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
    for p in range(1, len(ids)):
        assert lp.token_logprobs[p] == pytest.approx(ref[p - 1, ids[p]].item(), abs=1e-4), p
        top = lp.top_logprobs[p]
        assert lp.tokens[p] in top and top[lp.tokens[p]] == lp.token_logprobs[p]  # the chosen token is there
        best = int(ref[p - 1].argmax())
        assert top[tokenizer.decode([best])] == pytest.approx(ref[p - 1, best].item(), abs=1e-4)
    assert lp.tokens[: len(ids)] == [tokenizer.decode([t]) for t in ids]
    offsets = [0]
    for token in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp.text_offset == offsets


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_lm_eval_loglikelihood_requests_match_transformers(stack, hf, max_tokens):
    """lm-eval's `local-completions` loglikelihood request: token ids (context + continuation), echo,
    logprobs=1, temperature 0, batched. Chunked at 16 tokens; a prefix already cached is recomputed for
    its logprobs."""
    model, tokenizer = hf
    client = stack.client()
    context = tokenizer.encode(CONTEXT)
    prompts = [context + tokenizer.encode(" a fox"), context + tokenizer.encode(" an elephant in the room")]
    client.completions.create(model=MODEL, prompt=context, max_tokens=1)  # the context is cached now
    r = client.completions.create(
        model=MODEL, prompt=prompts, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0, seed=1234
    )
    assert [c.index for c in r.choices] == [0, 1]
    for choice, ids in zip(r.choices, prompts, strict=True):
        check_echo(choice, ids, reference_logprobs(model, ids), tokenizer, max_tokens)
        assert choice.text.startswith(tokenizer.decode(ids))
        assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == sum(len(p) for p in prompts)
    assert r.usage.completion_tokens == 2 * max_tokens


def test_echo_logprobs_streamed_equal_the_whole_response(stack, hf):
    model, tokenizer = hf
    ids = tokenizer.encode(CONTEXT[:60])
    kwargs = dict(model=MODEL, prompt=ids, echo=True, logprobs=2, max_tokens=3, temperature=0)
    whole = stack.client().completions.create(**kwargs).choices[0]
    tokens, logprobs, text = [], [], ""
    for chunk in stack.client().completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text += c.text
            if c.logprobs:
                tokens += c.logprobs.tokens
                logprobs += c.logprobs.token_logprobs
    assert text == whole.text and tokens == whole.logprobs.tokens
    assert logprobs[0] is None and whole.logprobs.token_logprobs[0] is None
    assert logprobs[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-5)


def test_logprobs_zero_and_the_sampled_token_always_in_top(stack):
    client = stack.client()
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, logprobs=0)
    lp = r.choices[0].logprobs
    assert [list(top) for top in lp.top_logprobs] == [[t] for t in lp.tokens]
    assert [top[t] for top, t in zip(lp.top_logprobs, lp.tokens, strict=True)] == lp.token_logprobs
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=12, logprobs=2, temperature=1.8, seed=3
    )
    lp = r.choices[0].logprobs
    assert all(t in top and len(top) in (2, 3) for t, top in zip(lp.tokens, lp.top_logprobs, strict=True))


def test_prompt_logprobs_and_return_token_ids(stack, hf):
    model, tokenizer = hf
    ids = tokenizer.encode("Hello there, general")
    r = stack.client().completions.create(
        model=MODEL,
        prompt=ids,
        max_tokens=2,
        temperature=0,
        extra_body={"prompt_logprobs": 2, "return_token_ids": True},
    )
    choice = r.choices[0].model_dump()
    assert choice["prompt_token_ids"] == ids and len(choice["token_ids"]) == 2
    plp = choice["prompt_logprobs"]
    ref = reference_logprobs(model, ids)
    assert plp[0] is None and len(plp) == len(ids)
    for p in range(1, len(ids)):
        entry = plp[p][str(ids[p])]
        assert entry["logprob"] == pytest.approx(ref[p - 1, ids[p]].item(), abs=1e-4)
        assert entry["rank"] == int((ref[p - 1] > ref[p - 1, ids[p]]).sum()) + 1
        assert entry["decoded_token"] == tokenizer.decode([ids[p]])
        assert len(plp[p]) in (2, 3)
    chat = (
        stack.client()
        .chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_body={"prompt_logprobs": 0, "return_token_ids": True},
        )
        .model_dump()
    )
    assert (
        len(chat["prompt_logprobs"]) == len(chat["prompt_token_ids"]) and chat["prompt_logprobs"][0] is None
    )
    assert len(chat["choices"][0]["token_ids"]) == chat["usage"]["completion_tokens"]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_continuous_usage_stats_add_up(stack, endpoint):
    client = stack.client()
    common = dict(
        model=MODEL,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    if endpoint == "chat":
        stream = client.chat.completions.create(messages=[{"role": "user", "content": "count"}], **common)
    else:
        stream = client.completions.create(prompt="one two three", **common)
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    *with_choices, final = chunks
    assert not final.choices and final.usage.completion_tokens == 6
    counts = [c.usage.completion_tokens for c in with_choices]
    assert counts == sorted(counts) and counts[-1] == 6
    assert all(c.usage.prompt_tokens == final.usage.prompt_tokens for c in chunks)
    assert all(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens for c in chunks)


def test_best_of_returns_the_most_likely_samples(stack):
    client = stack.client()
    kwargs = dict(model=MODEL, prompt="Tell me", max_tokens=5, temperature=1.0, seed=11)
    all_three = client.completions.create(n=3, logprobs=0, **kwargs)
    best = max(all_three.choices, key=lambda c: sum(c.logprobs.token_logprobs))
    r = client.completions.create(n=1, best_of=3, **kwargs)
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == best.text and r.choices[0].logprobs is None
    assert r.usage.completion_tokens == all_three.usage.completion_tokens  # every draw counts


def test_fields_accepted_and_ignored(stack):
    client = stack.client()
    base = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        metadata={"team": "eval"},
        store=False,
        service_tier="auto",
        user="someone",
        safety_identifier="abc",
        prompt_cache_key="k",
        verbosity="low",
        reasoning_effort="none",
        parallel_tool_calls=True,
        extra_body={"stream_options": None},
    )
    assert r.choices[0].message.content == base.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, store=True
        )
    assert err.value.body["param"] == "store" and "true" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return 1", max_tokens=2)
    assert err.value.body["param"] == "suffix" and "fill-in-the-middle" in err.value.body["message"]


def test_max_tokens_zero_without_echo_is_a_400(stack):
    status, body = post_json(stack.url + "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"


# ---- /v1/responses ---------------------------------------------------------------------------------------


def test_responses_create_matches_chat(stack):
    """Stateless Responses: instructions become the system message, the text is the chat completion's."""
    client = stack.client()
    r = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
        max_output_tokens=5,
        temperature=0,
        store=False,
        metadata={"k": "v"},
        reasoning={"effort": "low"},
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=5,
        temperature=0,
        reasoning_effort="low",
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.output_text
    # The same prompt as the chat request (instructions as its system message) and the same output length;
    # the texts are not compared: a random tiny model has near-ties that the prefix cache's rounding can flip.
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, 5)
    assert r.usage.total_tokens == r.usage.input_tokens + 5 and r.metadata == {"k": "v"}


def test_responses_stream_events(stack):
    client = stack.client()
    with client.responses.stream(model=MODEL, input="Hi there", max_output_tokens=4, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    plain = client.responses.create(model=MODEL, input="Hi there", max_output_tokens=4, temperature=0)
    assert deltas == final.output_text == plain.output_text
    assert final.usage.output_tokens == 4
    raw = client.responses.create(model=MODEL, input="Hi there", max_output_tokens=4, stream=True)
    assert [e.type for e in raw][-1] == "response.completed"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),  # OpenAI's built-in tools: not here
        ({"tools": [{"type": "function", "name": "f", "extra": 1}]}, "extra"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}}, "text"),
        ({"input": [{"type": "computer_call", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input"),
    ],
)
def test_responses_refusals_name_the_field(stack, extra, param):
    status, body = post_json(stack.url + "/v1/responses", {"model": MODEL, "input": "hi", **extra})
    assert status == 400 and body["error"]["param"] == param, body


def test_router_metrics_append_the_engines(stack):
    """What `pagoda serve` shows on /metrics: the router's own, then the engine's, labelled by engine; with
    vLLM's request_params_n, request_params_max_tokens and num_requests_waiting_by_reason."""
    client = stack.client()
    client.completions.create(model=MODEL, prompt="a", max_tokens=3, n=2)
    text = http_text(stack.url + "/metrics")
    engine = f'engine="{stack.engine_metrics}"'
    assert "pagoda_router_requests_total" in text
    labels = f'{engine},model_name="{MODEL}"'
    assert f'pagoda:num_requests_waiting_by_reason{{{labels},reason="capacity"}} 0.0' in text
    assert f'pagoda:num_requests_waiting_by_reason{{{labels},reason="deferred"}} 0.0' in text

    def n_bucket(le: str) -> float:
        line = next(
            x for x in text.splitlines() if x.startswith(f"pagoda:request_params_n_bucket{{{engine},le={le}")
        )
        return float(line.rsplit(" ", 1)[1])

    assert n_bucket('"2.0"') - n_bucket('"1.0"') >= 1  # the n=2 request above
    assert f"pagoda:request_params_max_tokens_count{{{labels}}}" in text
    assert text.count("# TYPE process_cpu_seconds_total") <= 1  # the engine's process families are left out


def test_embeddings_need_an_embedding_model(stack):
    status, body = post_json(stack.url + "/v1/embeddings", {"model": MODEL, "input": "x"})
    assert status == 400 and "not an embedding model" in body["error"]["message"]
