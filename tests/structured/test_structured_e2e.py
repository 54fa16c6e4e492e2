"""Structured outputs and forced tool calls through `pagoda` processes (tokenizer, engine, router) with the
openai SDK and LangChain as clients. The model is tiny and random, with the default model's real tokenizer
and chat template: whatever it writes, the grammar keeps it valid, on every sample."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.structured.schemas import PERSON
from tests.structured.stack import Stack

MODEL = "tiny"
MSGS = [{"role": "user", "content": "Describe a person."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.fixture(scope="module")
def stack(tiny_chat_model_dir, tmp_path_factory):
    s = Stack(tiny_chat_model_dir, tmp_path_factory.mktemp("structured-logs"), MODEL)
    yield s
    s.stop()


def _stream_texts(client, **kw) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    return texts


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "n": 3, "seed": 11}])
def test_json_schema_every_sample_validates(stack, sampling):
    client = stack.client()
    kw = dict(model=MODEL, messages=MSGS, response_format=FORMAT, max_tokens=200, **sampling)
    r = client.chat.completions.create(**kw)
    assert len(r.choices) == sampling.get("n", 1)
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    streamed = _stream_texts(client, **kw)
    assert [streamed[i] for i in sorted(streamed)] == [c.message.content for c in r.choices]


def test_regex_choice_and_completions(stack):
    client = stack.client()
    r = client.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": r"[A-Z][a-z]{2}-\d"}},
    )
    text = r.choices[0].message.content
    assert len(text) == 5 and text[0].isupper() and text[3] == "-" and text[4].isdigit()
    r = client.completions.create(
        model=MODEL,
        prompt="Yes or no?",
        max_tokens=10,
        temperature=1.0,
        n=3,
        seed=2,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert all(c.text in ("yes", "no") and c.finish_reason == "stop" for c in r.choices)
    r = client.completions.create(
        model=MODEL, prompt="{", max_tokens=60, extra_body={"response_format": {"type": "json_object"}}
    )
    assert r.choices[0].text.startswith("{")


def test_invalid_constraints_are_400_naming_the_field(stack):
    client = stack.client()
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MSGS, response_format=bad)
    body = info.value.body
    assert body["param"] == "response_format" and "response_format.json_schema.schema" in body["message"]
    assert "objekt" in body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=MODEL, prompt="x", extra_body={"structured_outputs": {"regex": "a(b"}}
        )
    assert info.value.body["param"] == "structured_outputs" and "regex" in info.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls_have_valid_arguments(stack, stream):
    client = stack.client()
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        kw = dict(
            model=MODEL,
            messages=MSGS,
            tools=[WEATHER],
            tool_choice=choice,
            max_tokens=120,
            temperature=1.0,
            seed=4,
        )
        if stream:
            calls: dict[int, dict] = {}
            finish = None
            for chunk in client.chat.completions.create(stream=True, **kw):
                for c in chunk.choices:
                    for tc in c.delta.tool_calls or []:
                        call = calls.setdefault(tc.index, {"name": None, "arguments": ""})
                        call["name"] = call["name"] or tc.function.name
                        call["arguments"] += tc.function.arguments or ""
                    finish = c.finish_reason or finish
            got = [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]
        else:
            r = client.chat.completions.create(**kw)
            finish = r.choices[0].finish_reason
            got = [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
        assert finish == "tool_calls" and got
        for name, arguments in got:
            assert name == "get_weather"
            jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


class Person(BaseModel):
    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]


def test_langchain_structured_output_and_bind_tools(stack):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=stack.url + "/v1", api_key="none", max_retries=0, max_tokens=120, temperature=0
    )
    for method in ("json_schema", "function_calling"):
        person = llm.with_structured_output(Person, method=method).invoke("Describe a person.")
        assert isinstance(person, Person), method

    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in a city."""
        return f"22 degrees {unit} in {city}"

    message = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert set(message.tool_calls[0]["args"]) == {"city", "unit"}
    assert get_weather.invoke(message.tool_calls[0]["args"])


@pytest.mark.slow
def test_agent_round_trip_with_the_default_model(default_model_dir, tmp_path_factory):
    """SmolLM2 (its template knows no tools: the tokenizer service describes them): the user asks, the model
    must call the tool (tool_choice required), the tool's result goes back, and the model answers."""
    s = Stack(default_model_dir, tmp_path_factory.mktemp("agent-logs"), "smol")
    try:
        client = s.client()
        messages = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
        r = client.chat.completions.create(
            model="smol",
            messages=messages,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=60,
            temperature=0,
        )
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, WEATHER["function"]["parameters"])
        messages += [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": f"Sunny, 22 degrees {args['unit']}."},
        ]
        r = client.chat.completions.create(
            model="smol", messages=messages, tools=[WEATHER], max_tokens=24, temperature=0
        )
        answer = r.choices[0]
        assert answer.finish_reason in ("stop", "length") and answer.message.content
        assert answer.message.tool_calls is None
    finally:
        s.stop()


def test_responses_parse_and_forced_tools(stack):
    """The openai SDK's Responses helpers: `responses.parse(text_format=...)` gets an object that validates,
    and a forced function tool gives a function_call whose arguments fit its parameters, streamed and not."""
    client = stack.client()
    r = client.responses.parse(
        model=MODEL, input="Describe a person.", text_format=Person, max_output_tokens=120
    )
    assert isinstance(r.output_parsed, Person) and r.status == "completed"
    tool = {"type": "function", **WEATHER["function"]}
    # One call (parallel_tool_calls false): a random model's list of calls could run past any budget.
    kw = dict(model=MODEL, input="Weather?", tools=[tool], tool_choice="required", max_output_tokens=120)
    kw.update(parallel_tool_calls=False, temperature=1.0)
    for final in (client.responses.create(**kw), _final_streamed_response(client, **kw)):
        calls = [o for o in final.output if o.type == "function_call"]
        assert final.status == "completed" and len(calls) == 1 and calls[0].name == "get_weather"
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])


def _final_streamed_response(client, **kw):
    with client.responses.stream(**kw) as stream:
        for _ in stream:
            pass
        return stream.get_final_response()
