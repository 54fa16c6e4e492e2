"""Tool calls and reasoning through the real router (openai SDK in front, scripted engine behind): each
tool-call format, streamed a token at a time and in bigger pieces, assembled from the deltas, equals the
non-streamed response; no markup reaches `content`."""

from __future__ import annotations

import json

import openai
import pytest

from router.api.sampling import value_of
from tests.router.router_fakes import Script

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
MSGS = [{"role": "user", "content": "Weather in Paris and Rome?"}]

# parser -> (scripted model output, expected content, expected calls as (name, arguments object))
CASES = {
    "hermes": (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome \\"Eternal\\" {}"}}\n</tool_call>',
        "Let me look.\n",
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": 'Rome "Eternal" {}'})],
    ),
    "llama3_json": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_time", "parameters": {}}',
        None,
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    "mistral": (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]',
        None,
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
}


def calls_of(tool_calls) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls]


async def streamed(client, **kw):
    """(content, reasoning, tool calls assembled from their deltas, finish reason, every delta)."""
    content, reasoning, calls, finish, deltas = "", "", {}, None, []
    stream = await client.chat.completions.create(stream=True, **kw)
    async for chunk in stream:
        for choice in chunk.choices:
            d = choice.delta
            deltas.append(d)
            content += d.content or ""
            reasoning += getattr(d, "reasoning_content", None) or ""
            for tc in d.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert call["id"] is None, "a call's id comes once, first"
                    call["id"], call["name"] = tc.id, tc.function.name
                else:
                    assert call["id"] is not None, "arguments before the call's id and name"
                call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assembled = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    return content, reasoning, assembled, finish, deltas


@pytest.mark.parametrize("parser", sorted(CASES))
@pytest.mark.parametrize("tokens_per_message", [1, 7])
async def test_tool_calls_streamed_and_not(make_stack, parser, tokens_per_message):
    reply, content, expected = CASES[parser]
    # One Generate call per request: the engine's messages reach the parser one by one (a Multiplex stream
    # may merge a slow reader's messages, and then the arguments come in fewer pieces).
    stack = await make_stack(
        [Script(reply=reply, tokens_per_message=tokens_per_message)],
        tool_call_parser=parser,
        engine_stream="generate",
    )
    client = stack.client()
    kw = dict(model="scripted", messages=MSGS, tools=[WEATHER, TIME])
    r = await client.chat.completions.create(**kw)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls_of(message.tool_calls) == expected
    assert message.content == content
    assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
    s_content, _, s_calls, s_finish, deltas = await streamed(client, **kw)
    assert (s_content or None, s_calls, s_finish) == (content, expected, "tool_calls")
    assert sum(1 for d in deltas for tc in d.tool_calls or [] if tc.function.arguments) > len(expected) or (
        tokens_per_message > 1
    ), "arguments come in fragments when the text does"
    for marker in ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", '"name"'):
        assert marker not in s_content
    # The markers are special tokens in these families: the router asks the engine to keep them.
    sent = stack.engines[0].requests[-1].sampling_params
    assert value_of(sent, "skip_special_tokens") == (parser == "hermes")  # unset: the default, True


async def test_plain_text_and_tool_choice_none_stay_content(make_stack):
    stack = await make_stack([Script(reply='Just text, a "{" and <tool')], tool_call_parser="hermes")
    client = stack.client()
    for choice in ("auto", "none"):
        r = await client.chat.completions.create(
            model="scripted", messages=MSGS, tools=[WEATHER], tool_choice=choice
        )
        assert r.choices[0].message.content == 'Just text, a "{" and <tool'
        assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"
    # none: the tools are not rendered into the prompt either.
    assert stack.tokenizer.requests[-1].chat.tools_json == ""
    assert json.loads(stack.tokenizer.requests[-2].chat.tools_json)[0]["function"]["name"] == "get_weather"


async def test_forced_tool_choice_sends_a_grammar_and_parses_its_output(make_stack):
    stack = await make_stack([Script(reply='{"city": "Paris"}', tokens_per_message=2)])
    client = stack.client()
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = await client.chat.completions.create(
        model="scripted", messages=MSGS, tools=[WEATHER, TIME], tool_choice=named
    )
    assert calls_of(r.choices[0].message.tool_calls) == [("get_weather", {"city": "Paris"})]
    schema = json.loads(stack.engines[0].requests[-1].structured_output.json_schema)
    assert schema == WEATHER["function"]["parameters"]
    _, _, calls, finish, _ = await streamed(
        client, model="scripted", messages=MSGS, tools=[WEATHER], tool_choice=named
    )
    assert (calls, finish) == ([("get_weather", {"city": "Paris"})], "tool_calls")

    stack.engines[
        0
    ].script.reply = (
        '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Oslo"}}]'
    )
    kw = dict(model="scripted", messages=MSGS, tools=[WEATHER, TIME], tool_choice="required")
    r = await client.chat.completions.create(**kw)
    assert calls_of(r.choices[0].message.tool_calls) == [("get_time", {}), ("get_weather", {"city": "Oslo"})]
    schema = json.loads(stack.engines[0].requests[-1].structured_output.json_schema)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    assert {c["properties"]["name"]["const"] for c in schema["items"]["anyOf"]} == {"get_weather", "get_time"}
    await client.chat.completions.create(**kw, parallel_tool_calls=False)
    assert json.loads(stack.engines[0].requests[-1].structured_output.json_schema)["maxItems"] == 1


async def test_history_with_tool_calls_and_results_reaches_the_tokenizer(make_stack):
    stack = await make_stack([Script(reply="It is sunny.")])
    client = stack.client()
    history = [
        *MSGS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    # The scripted tokenizer refuses the tool role (as a template without one would): a 400 naming it.
    with pytest.raises(Exception) as info:
        await client.chat.completions.create(model="scripted", messages=history, tools=[WEATHER])
    assert "tool role" in str(info.value)
    sent = stack.tokenizer.requests[-1].chat.messages
    assert [(c.id, c.name, json.loads(c.arguments)) for c in sent[1].tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
    assert sent[2].tool_call_id == "call_1"


@pytest.mark.parametrize("tokens_per_message", [1, 5])
async def test_reasoning_split(make_stack, tokens_per_message):
    reply = "<think>\nThe user wants the weather.\n</think>\n\nIt is sunny."
    stack = await make_stack(
        [Script(reply=reply, tokens_per_message=tokens_per_message)], reasoning_parser="qwen3"
    )
    client = stack.client()
    r = await client.chat.completions.create(model="scripted", messages=MSGS)
    message = r.choices[0].message
    assert message.content == "It is sunny."
    assert message.model_extra["reasoning_content"] == "\nThe user wants the weather.\n"
    content, reasoning, _, finish, _ = await streamed(client, model="scripted", messages=MSGS)
    assert (content, reasoning, finish) == ("It is sunny.", "\nThe user wants the weather.\n", "stop")
    # A constrained request's grammar starts after the thinking.
    await client.chat.completions.create(
        model="scripted", messages=MSGS, response_format={"type": "json_object"}
    )
    so = stack.engines[0].requests[-1].structured_output
    assert (so.json_object, so.reasoning_start, so.reasoning_end) == (True, "<think>", "</think>")


async def test_reasoning_then_tool_calls(make_stack):
    reply = (
        '<think>Paris.</think><tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    stack = await make_stack([Script(reply=reply, tokens_per_message=3)], reasoning_parser="qwen3")
    client = stack.client()
    r = await client.chat.completions.create(model="scripted", messages=MSGS, tools=[WEATHER])
    message = r.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == (None, "Paris.")
    assert calls_of(message.tool_calls) == [("get_weather", {"city": "Paris"})]
    content, reasoning, calls, finish, _ = await streamed(
        client, model="scripted", messages=MSGS, tools=[WEATHER]
    )
    assert (content, reasoning, calls, finish) == (
        "",
        "Paris.",
        [("get_weather", {"city": "Paris"})],
        "tool_calls",
    )


async def test_response_format_and_structured_outputs_reach_the_engine(make_stack):
    stack = await make_stack([Script(reply='{"a": 1}')])
    client = stack.client()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    await client.chat.completions.create(model="scripted", messages=MSGS, response_format=fmt)
    assert json.loads(stack.engines[0].requests[-1].structured_output.json_schema) == schema
    for body, field, value in [
        ({"regex": "[a-z]+"}, "regex", "[a-z]+"),
        ({"grammar": 'root ::= "a"'}, "grammar", 'root ::= "a"'),
        ({"grammar": 'start: "a"'}, "lark", 'start: "a"'),
    ]:
        await client.completions.create(model="scripted", prompt="x", extra_body={"structured_outputs": body})
        assert getattr(stack.engines[0].requests[-1].structured_output, field) == value
    await client.completions.create(
        model="scripted", prompt="x", extra_body={"structured_outputs": {"choice": ["yes", "no"]}}
    )
    assert list(stack.engines[0].requests[-1].structured_output.choice.values) == ["yes", "no"]


# ---- the same parts through /v1/responses ----------------------------------------------------------------

RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}  # Responses' tools are flat


async def streamed_response(client, **kw):
    """(the streamed events' types, the final response, every output item assembled from the events)."""
    items: dict[int, dict] = {}
    types = []
    async with client.responses.stream(**kw) as stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_item.added":
                items[event.output_index] = event.item.to_dict()
            elif event.type == "response.output_text.delta":
                items[event.output_index].setdefault("text", "")
                items[event.output_index]["text"] += event.delta
            elif event.type == "response.reasoning_text.delta":
                items[event.output_index].setdefault("reasoning", "")
                items[event.output_index]["reasoning"] += event.delta
            elif event.type == "response.function_call_arguments.delta":
                items[event.output_index]["arguments"] += event.delta
            elif event.type == "response.output_item.done":
                assert items[event.output_index]["id"] == event.item.id
        final = await stream.get_final_response()
    return types, final, [items[i] for i in sorted(items)]


@pytest.mark.parametrize("tokens_per_message", [1, 6])
async def test_responses_tool_calls_and_reasoning(make_stack, tokens_per_message):
    """Reasoning, the answer and two calls become a reasoning item, a message and two function_call items,
    streamed and not; assembled from the stream's events they equal the non-streamed output."""
    reply = "<think>Two cities.</think>" + CASES["hermes"][0]
    stack = await make_stack(
        [Script(reply=reply, tokens_per_message=tokens_per_message)],
        tool_call_parser="hermes",
        reasoning_parser="qwen3",
        engine_stream="generate",
    )
    client = stack.client()
    kw = dict(model="scripted", input="Weather in Paris and Rome?", tools=[RESPONSES_WEATHER])
    r = await client.responses.create(**kw)
    assert [o.type for o in r.output] == ["reasoning", "message", "function_call", "function_call"]
    assert r.output[0].content[0].text == "Two cities." and r.output_text == CASES["hermes"][1]
    calls = [(o.name, json.loads(o.arguments)) for o in r.output[2:]]
    assert calls == CASES["hermes"][2] and r.status == "completed"
    assert all(o.call_id.startswith("call_") and o.id.startswith("fc_") for o in r.output[2:])
    assert r.tools[0].name == "get_weather" and r.tools[0].type == "function"
    types, final, items = await streamed_response(client, **kw)
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call", "function_call"]
    assert items[0]["reasoning"] == "Two cities." and items[1]["text"] == CASES["hermes"][1]
    assert [(i["name"], json.loads(i["arguments"])) for i in items[2:]] == calls
    assert [(o.name, json.loads(o.arguments)) for o in final.output[2:]] == calls
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == 4
    assert types[-1] == "response.completed" and "response.function_call_arguments.done" in types
    # The tools reached the chat template, in chat's spelling.
    sent = json.loads(stack.tokenizer.requests[-1].chat.tools_json)
    assert sent == [WEATHER]


async def test_responses_function_call_items_become_the_chat_history(make_stack):
    """A previous response's function_call items and the client's function_call_output items are the
    assistant's tool calls and the tool messages of the chat template's conversation."""
    stack = await make_stack([Script(reply="It is sunny.")])
    client = stack.client()
    paris, rome = '{"city":"Paris"}', '{"city":"Rome"}'
    paris, rome = '{"city":"Paris"}', '{"city":"Rome"}'
    rome_output = [{"type": "input_text", "text": "25 C"}]
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": paris},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": rome},
        {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
        {"type": "function_call_output", "call_id": "call_2", "output": rome_output},
    ]
    with pytest.raises(Exception) as info:  # the scripted tokenizer's template has no tool role
        await client.responses.create(model="scripted", input=history, tools=[RESPONSES_WEATHER])
    assert "tool role" in str(info.value)
    sent = stack.tokenizer.requests[-1].chat.messages
    assert [m.role for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [(c.id, c.name, c.arguments) for c in sent[1].tool_calls] == [
        ("call_1", "get_weather", paris),
        ("call_2", "get_weather", rome),
    ]
    assert [(m.tool_call_id, m.content) for m in sent[2:]] == [("call_1", "22 C"), ("call_2", "25 C")]


async def test_responses_text_format_and_forced_tools_reach_the_engine(make_stack):
    stack = await make_stack([Script(reply='{"city": "Oslo"}')])
    client = stack.client()
    schema = WEATHER["function"]["parameters"]
    fmt = {"type": "json_schema", "name": "w", "schema": schema, "strict": True}
    r = await client.responses.create(model="scripted", input="x", text={"format": fmt})
    assert json.loads(stack.engines[0].requests[-1].structured_output.json_schema) == schema
    assert r.output_text == '{"city": "Oslo"}' and r.text.format.type == "json_schema"
    await client.responses.create(model="scripted", input="x", text={"format": {"type": "json_object"}})
    assert stack.engines[0].requests[-1].structured_output.json_object
    named = {"type": "function", "name": "get_weather"}
    r = await client.responses.create(
        model="scripted", input="x", tools=[RESPONSES_WEATHER], tool_choice=named
    )
    assert json.loads(stack.engines[0].requests[-1].structured_output.json_schema) == schema
    assert [(o.type, o.name, json.loads(o.arguments)) for o in r.output] == [
        ("function_call", "get_weather", {"city": "Oslo"})
    ]
    with pytest.raises(Exception) as info:
        await client.responses.create(
            model="scripted", input="x", tools=[RESPONSES_WEATHER], tool_choice=named, text={"format": fmt}
        )
    assert info.value.status_code == 400 and info.value.body["param"] == "tool_choice"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [1]}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools"),  # no name
        ({"tools": [{"type": "function", "name": "f", "parameters": "x"}]}, "tools"),
        ({"tools": [{"type": "function", "name": "f"}] * 129}, "tools"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tools": [RESPONSES_WEATHER], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": "json"}, "text"),
        ({"text": {"format": "json"}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": 1, "schema": {}}}}, "text.format"),
        ({"input": [{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}]}, "input"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input"),
        (
            {
                "input": [
                    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}
                ]
            },
            "input[0].output.content[0].type",
        ),
        ({"input": [{"type": "reasoning", "secret": 1}]}, "secret"),
    ],
)
async def test_responses_bad_tools_formats_and_items_are_400s(make_stack, extra, param):
    stack = await make_stack([Script()])
    client = stack.client()
    body = {"model": "scripted", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as info:
        await client.post("/responses", body=body, cast_to=object)
    assert info.value.body["param"] == param, info.value.body
    assert not stack.engines[0].requests  # refused before anything reached an engine
