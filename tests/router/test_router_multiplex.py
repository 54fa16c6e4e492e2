"""Requests reach an engine over its multiplexed stream: one call for all of them, the same answers as
Generate's, and Generate still for an engine without Multiplex (or when configured)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from router_fakes import Script, encode

from pagoda.engine.v1 import engine_pb2 as pb
from router.upstream.multiplex import MAX_QUEUED, Sink, merge
from tests.router.conftest import wait_for

MSGS = [{"role": "user", "content": "hi"}]
REPLY = Script().reply


async def stream_text(client, **kw) -> str:
    stream = await client.chat.completions.create(model="scripted", messages=MSGS, stream=True, **kw)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_concurrent_requests_share_one_multiplexed_call(make_stack):
    stack = await make_stack([Script(delay_s=0.005)])
    client = stack.client()
    texts = await asyncio.gather(*(stream_text(client) for _ in range(8)))
    r = await client.completions.create(model="scripted", prompt="x", max_tokens=5, n=2)
    assert texts == [REPLY] * 8 and [c.text for c in r.choices] == [REPLY[:5]] * 2
    engine = stack.engines[0]
    await wait_for(lambda: len(engine.finished) == 9, what="every generation finished on the engine")
    assert engine.calls == {"Generate": 0, "Multiplex": 1}
    assert stack.ctx.registry.engines[0].multiplexer.num_open == 0  # every generation ended


async def test_an_engine_without_multiplex_gets_generate_calls(make_stack):
    stack = await make_stack([Script(multiplex=False)])
    client = stack.client()
    assert await stream_text(client) == REPLY
    assert await stream_text(client) == REPLY
    assert stack.engines[0].calls == {"Generate": 2, "Multiplex": 1}  # tried once, then Generate
    assert stack.ctx.registry.engines[0].multiplexer.unsupported


async def test_engine_stream_generate_makes_one_call_per_request(make_stack):
    stack = await make_stack(engine_stream="generate")
    client = stack.client()
    assert await asyncio.gather(stream_text(client), stream_text(client)) == [REPLY, REPLY]
    assert stack.engines[0].calls == {"Generate": 2, "Multiplex": 0}


async def test_a_client_that_disconnects_cancels_its_generation_alone(make_stack):
    stack = await make_stack([Script(delay_s=0.01, reply="x" * 300)])
    engine, client = stack.engines[0], stack.client()
    other = asyncio.create_task(stream_text(client, max_tokens=60))
    async with aiohttp.ClientSession() as session:
        body = {"model": "scripted", "messages": MSGS, "stream": True, "user": "leaves"}
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            await r.content.readline()
            await r.content.readline()
        # Leaving the block closes the connection mid-stream.
    await wait_for(lambda: len(engine.cancelled) == 1, what="the engine to abort the generation")
    assert await other == "x" * 60  # the generation beside it on the same call goes on to its end
    await wait_for(lambda: len(engine.finished) == 1 and not engine.active, what="the other to finish")
    assert engine.cancelled != engine.finished and engine.calls == {"Generate": 0, "Multiplex": 1}
    assert stack.ctx.registry.engines[0].multiplexer.num_open == 0


async def test_a_generation_that_fails_mid_stream_fails_alone(make_stack):
    stack = await make_stack([Script(delay_s=0.01, fail_after_messages=3, fail_only="doomed")])
    client = stack.client()
    doomed = await client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "doomed"}], stream=True
    )
    healthy = asyncio.create_task(stream_text(client))
    received = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in doomed:
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received == "Hel" and "engine failed" in info.value.message
    assert await healthy == REPLY
    # UNAVAILABLE ejects the engine (as a failed Generate call does) until its next probe passes; then
    # it serves on the same call.
    await wait_for(lambda: stack.ctx.registry.engines[0].ready, what="the engine back")
    assert await stream_text(client) == REPLY
    assert stack.engines[0].calls["Multiplex"] == 1


async def test_an_engine_that_dies_fails_its_generations_and_the_others_retry(make_stack):
    stack = await make_stack([Script(delay_s=0.01), Script(delay_s=0.01)], policy="round_robin")
    client = stack.client()

    async def one() -> str:
        try:
            return await stream_text(client, max_tokens=25)
        except openai.APIError as err:
            return err.message

    tasks = [asyncio.create_task(one()) for _ in range(6)]
    await wait_for(lambda: all(e.active for e in stack.engines), what="generations on both engines")
    await stack.engine_servers[0].stop(0)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # Those streaming on the dead engine end with an error event; the others finish.
    failed = [r for r in results if r != REPLY[:25]]
    assert REPLY[:25] in results and failed and all(r.startswith("The engine failed") for r in failed)
    dead = registry_engine(stack, 0)
    await wait_for(lambda: not dead.ready, what="the dead engine ejected")
    assert await asyncio.gather(*(one() for _ in range(4))) == [REPLY[:25]] * 4


async def test_a_first_token_deadline_cancels_the_generation_on_the_engine(make_stack):
    stack = await make_stack([Script(hang=False), Script()], policy="round_robin", first_token_timeout_s=0.3)
    slow = stack.engines[0]
    slow.script.delay_s = 0
    started = time.monotonic()
    client = stack.client()
    slow.script.hang = True  # takes the generation and never answers (its probes hang too)
    for _ in range(2):  # one lands on the hung engine first and is retried on the other
        r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
        assert r.choices[0].message.content == "He"
    assert time.monotonic() - started < 3
    mux = registry_engine(stack, 0).multiplexer
    assert mux.num_open == 0  # the timed-out generation was cancelled, not left on the call


async def test_a_stalled_reader_holds_its_own_tokens_merged_and_stalls_no_one(make_stack):
    """One generation's consumer stops reading (a slow client): the call's reader keeps handing the other
    generations their messages, and the stalled one's queue stays bounded, every token kept in order."""
    reply = "abcdefghij" * 30
    stack = await make_stack([Script(reply=reply)])
    ctx = stack.ctx
    card = ctx.registry.resolve("scripted")

    def request(rid: str) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            request_id=rid,
            prompt_token_ids=pb.TokenIds(ids=encode("hi")),
            sampling_params=pb.SamplingParams(max_tokens=len(reply)),
        )

    stalled = await ctx.dispatcher.open(card, request("stalled"))
    reader = await ctx.dispatcher.open(card, request("reader"))
    try:
        assert "".join([m.text async for m in reader]) == reply
        await wait_for(lambda: len(stack.engines[0].finished) == 2, what="the engine to finish both")
        assert stalled._sink.num_queued <= MAX_QUEUED  # ~300 messages arrived for it, merged
        assert "".join([m.text async for m in stalled]) == reply
    finally:
        stalled.close()
        reader.close()


async def test_reconnected_channels_finish_open_generations_on_the_old_call(make_stack):
    """The router's TLS files changed: new generations go over a call on the new channel, the ones in
    flight finish on the old call, which then ends."""
    stack = await make_stack([Script(delay_s=0.01)])
    client, engine = stack.client(), stack.engines[0]
    before = asyncio.create_task(stream_text(client))
    await wait_for(lambda: engine.active, what="a generation in flight")
    stack.ctx.registry.reconnect()
    after = await stream_text(client)
    assert (await before, after) == (REPLY, REPLY)
    assert engine.calls == {"Generate": 0, "Multiplex": 2}
    await wait_for(
        lambda: len(stack.ctx.registry.engines[0].multiplexer._calls) == 1, what="the old call to end"
    )


async def test_a_client_that_leaves_a_retired_call_still_cancels_its_generation(make_stack):
    stack = await make_stack([Script(delay_s=0.01, reply="x" * 300)])
    engine = stack.engines[0]
    async with aiohttp.ClientSession() as session:
        body = {"model": "scripted", "messages": MSGS, "stream": True}
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            await r.content.readline()
            stack.ctx.registry.reconnect()  # the call it runs on takes no new generations now
            await r.content.readline()
    await wait_for(lambda: engine.cancelled, what="the engine to abort the generation")
    assert not engine.finished
    mux = registry_engine(stack, 0).multiplexer
    await wait_for(lambda: not mux._calls, what="the retired call to end")


def registry_engine(stack, i: int):
    """The router's Engine for the stack's i-th scripted engine (the registry's order is its own)."""
    address = f"127.0.0.1:{stack.engine_ports[i]}"
    return next(e for e in stack.ctx.registry.engines if e.address == address)


def message(index=0, ids=(), text="", finish=0, usage=None) -> pb.GenerateResponse:
    m = pb.GenerateResponse(index=index, token_ids=ids, text=text, finish_reason=finish)
    if usage is not None:
        m.usage.CopyFrom(pb.Usage(prompt_tokens=3, completion_tokens=usage))
    return m


def test_messages_that_piled_up_merge_into_one_per_sample():
    merged = merge(
        [
            message(0, [5], "a"),
            message(1, [6], "b"),
            message(0, [7, 8], "cd"),
            message(1, [9], "e", pb.FINISH_REASON_LENGTH),
            message(0, [10], "f", pb.FINISH_REASON_STOP, usage=6),
        ]
    )
    assert [(m.index, list(m.token_ids), m.text) for m in merged] == [
        (1, [6, 9], "be"),
        (0, [5, 7, 8, 10], "acdf"),
    ]
    assert merged[0].finish_reason == pb.FINISH_REASON_LENGTH and not merged[0].HasField("usage")
    assert merged[1].finish_reason == pb.FINISH_REASON_STOP and merged[1].usage.completion_tokens == 6


async def test_a_sink_hands_over_everything_queued_at_once():
    sink = Sink(1)
    sink.push(message(0, [1], "x"))
    sink.push(message(0, [2], "y"))
    assert [(list(m.token_ids), m.text) for m in await sink.get()] == [([1, 2], "xy")]
    waiting = asyncio.ensure_future(sink.get())
    await asyncio.sleep(0)
    sink.push(message(0, [3], "z", pb.FINISH_REASON_STOP, usage=3))
    assert [m.text for m in await waiting] == ["z"] and sink.done
    assert await sink.get() == []  # ended


async def test_a_sink_that_is_not_read_merges_instead_of_growing():
    sink = Sink(1)
    for i in range(10 * MAX_QUEUED):
        sink.push(message(0, [i], "x"))
        assert sink.num_queued <= MAX_QUEUED
    [merged] = await sink.get()
    assert list(merged.token_ids) == list(range(10 * MAX_QUEUED)) and merged.text == "x" * 10 * MAX_QUEUED
