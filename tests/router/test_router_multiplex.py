"""Requests reach an engine over its multiplexed stream: one call for all of them, the same answers as
Generate's, and Generate still for an engine without Multiplex (or when configured)."""

from __future__ import annotations

import asyncio

from router_fakes import Script

from pagoda.engine.v1 import engine_pb2 as pb
from router.upstream.multiplex import Sink, merge
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
