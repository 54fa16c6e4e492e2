"""Engines failing, hanging, draining, leaving; clients going away; traffic across several engines."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import grpc
import openai
import pytest
from router_fakes import Script

from tests.router.conftest import wait_for

MSGS = [{"role": "user", "content": "hi"}]


async def test_failure_before_first_token_retries_on_another_engine(make_stack):
    stack = await make_stack(
        [Script(fail_before_first=grpc.StatusCode.UNAVAILABLE), Script()], policy="round_robin"
    )
    client = stack.client()
    for _ in range(4):
        r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
        assert r.choices[0].message.content == "He"
    bad, good = stack.engines
    assert bad.requests, "round robin never tried the failing engine"
    # Each request the failing engine saw was served by the other one under the same id.
    assert {r.request_id for r in bad.requests} <= {r.request_id for r in good.requests}


async def test_failure_after_first_token_ends_the_stream_with_an_error(make_stack):
    stack = await make_stack([Script(fail_after_messages=3)])
    stream = await stack.client().chat.completions.create(model="scripted", messages=MSGS, stream=True)
    received = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received == "Hel" and "engine failed" in info.value.message
    # Without streaming the same failure is a 503, not a truncated answer.
    status, err, _ = await stack.post("/v1/chat/completions", {"model": "scripted", "messages": MSGS})
    assert status == 503 and err["error"]["type"] == "server_error"


async def test_hung_engine_does_not_hang_clients(make_stack):
    stack = await make_stack([Script(delay_s=0.02), Script(delay_s=0.02)], policy="round_robin")
    client = stack.client()
    streams = [
        await client.chat.completions.create(model="scripted", messages=MSGS, stream=True) for _ in range(2)
    ]
    hung = stack.engines[0]
    hung.script.hang = True  # stops mid-stream and stops answering probes
    started = time.monotonic()
    outcomes = []
    for stream in streams:
        try:
            async for _ in stream:
                pass
            outcomes.append("ok")
        except openai.APIError as err:
            outcomes.append(err.message)
    assert sorted(outcomes) == ["The engine stopped responding.", "ok"]
    assert time.monotonic() - started < 5
    # New requests go to the healthy engine.
    for _ in range(3):
        r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
        assert r.choices[0].finish_reason == "length"


async def test_engine_that_never_answers_times_out_before_first_token(make_stack):
    stack = await make_stack([Script(), Script()], policy="round_robin", first_token_timeout_s=0.3)
    stack.engines[0].script.hang = True
    stack.engines[0].script.delay_s = 0
    client = stack.client()
    started = time.monotonic()
    for _ in range(2):  # one of them lands on the hung engine first and is retried
        r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
        assert r.choices[0].message.content == "He"
    assert time.monotonic() - started < 3


async def test_engine_killed_mid_run(make_stack):
    stack = await make_stack([Script(delay_s=0.01), Script(delay_s=0.01)], policy="round_robin")
    client = stack.client()

    async def one(i: int) -> str:
        try:
            r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=20)
            return r.choices[0].finish_reason
        except openai.APIStatusError as err:
            return f"http {err.status_code}"

    tasks = [asyncio.create_task(one(i)) for i in range(8)]
    await asyncio.sleep(0.05)
    await stack.engine_servers[0].stop(0)  # the engine dies with requests in flight
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert "length" in results and set(results) <= {"length", "http 503"}
    # Every new request succeeds on the survivor.
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 10)
    assert results == ["length"] * 8


async def test_client_disconnect_mid_stream_cancels_the_engine_call(make_stack):
    stack = await make_stack([Script(delay_s=0.02, reply="x" * 400)])
    engine = stack.engines[0]
    async with aiohttp.ClientSession() as session:
        body = {"model": "scripted", "messages": MSGS, "stream": True}
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            await r.content.readline()
            await r.content.readline()
        # Leaving the block closes the connection mid-stream.
    await wait_for(lambda: engine.cancelled, what="the engine call to be cancelled")
    assert not engine.finished and not engine.active
    await wait_for(lambda: stack.ctx.registry.engines[0].num_outstanding == 0, what="outstanding back to 0")


async def test_client_disconnect_without_streaming_cancels_the_engine_call(make_stack):
    stack = await make_stack([Script(delay_s=0.02, reply="x" * 400)])
    engine = stack.engines[0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(stack.url + "/v1/completions", json={"model": "scripted", "prompt": "x"})
    await wait_for(lambda: engine.cancelled, what="the engine call to be cancelled")
    assert not engine.finished


async def test_draining_engine_gets_no_new_requests(make_stack):
    stack = await make_stack([Script(), Script()], policy="round_robin")
    stack.engines[0].script.draining = True
    registry = stack.ctx.registry
    await wait_for(lambda: sum(e.ready for e in registry.engines) == 1, what="the draining engine to leave")
    for _ in range(4):
        await stack.client().chat.completions.create(model="scripted", messages=MSGS, max_tokens=1)
    assert not stack.engines[0].requests and len(stack.engines[1].requests) == 4


async def test_engine_removed_by_discovery_finishes_its_streams(make_stack):
    stack = await make_stack([Script(delay_s=0.01), Script()])
    registry = stack.ctx.registry
    first = f"127.0.0.1:{stack.engine_ports[0]}"
    registry.update("static", [f"127.0.0.1:{stack.engine_ports[1]}"])  # the first engine is leaving...
    assert first not in {e.address for e in registry.engines}
    r = await stack.client().chat.completions.create(model="scripted", messages=MSGS)
    assert r.choices[0].finish_reason == "stop" and not stack.engines[0].requests
    # ...and one removed while streaming completes its stream.
    stack2 = await make_stack([Script(delay_s=0.01)])
    stream = await stack2.client().chat.completions.create(model="scripted", messages=MSGS, stream=True)
    stack2.ctx.registry.update("static", [])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == Script().reply


async def test_requests_go_only_to_engines_of_their_model(make_stack):
    stack = await make_stack([Script(model="a"), Script(model="b"), Script(model="b")])
    client = stack.client()
    assert sorted(m.id for m in (await client.models.list()).data) == ["a", "b"]
    for model in ("a", "b", "b", "a", "b"):
        r = await client.chat.completions.create(model=model, messages=MSGS, max_tokens=1)
        assert r.model == model
    assert (
        len(stack.engines[0].requests) == 2
        and len(stack.engines[1].requests + stack.engines[2].requests) == 3
    )


async def test_two_engines_spread_traffic_and_keep_prefix_affinity(make_stack):
    stack = await make_stack([Script(), Script()])  # default policy: prefix_affinity
    client = stack.client()

    async def ask(system: str, user: str) -> None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        await client.chat.completions.create(model="scripted", messages=messages, max_tokens=1)

    # 30 different system prompts: both engines get a share.
    for i in range(30):
        await ask(f"{i:03d}: you are a helpful assistant.", "hello")  # differs within the hashed blocks
    shares = [len(e.requests) for e in stack.engines]
    assert min(shares) >= 5, shares
    # One system prompt, many user turns: every request lands where the prefix already went.
    before = [len(e.requests) for e in stack.engines]
    for i in range(10):
        await ask("A long shared system prompt that many users send first.", f"question {i}")
    gained = [len(e.requests) - b for e, b in zip(stack.engines, before, strict=True)]
    assert sorted(gained) == [0, 10], gained


async def test_ejected_engine_comes_back(make_stack):
    stack = await make_stack([Script(), Script()], policy="round_robin")
    registry = stack.ctx.registry
    victim = registry.engines[0]
    registry.request_failed(victim, "test")
    assert not victim.ready
    await wait_for(lambda: victim.ready, timeout_s=3, what="the engine to be re-probed and readmitted")
    engine_counts = Counter()
    for _ in range(4):
        await stack.client().chat.completions.create(model="scripted", messages=MSGS, max_tokens=1)
    engine_counts.update(len(e.requests) for e in stack.engines)
    assert all(len(e.requests) == 2 for e in stack.engines)


async def test_session_policy_follows_the_header(make_stack):
    stack = await make_stack([Script(), Script(), Script()], policy="session")
    homes = []
    for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
        client = stack.client(default_headers={"X-Session-Id": session})
        before = [len(e.requests) for e in stack.engines]
        for _ in range(3):
            await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=1)
        gained = [len(e.requests) - b for e, b in zip(stack.engines, before, strict=True)]
        assert sorted(gained) == [0, 0, 3], gained  # every turn of a session on one engine
        homes.append(gained.index(3))
    assert len(set(homes)) > 1  # sessions spread over the engines
    # Without the header, OpenAI's prompt_cache_key (then `user`) keys the session.
    before = [len(e.requests) for e in stack.engines]
    for _ in range(3):
        await stack.client().chat.completions.create(
            model="scripted", messages=MSGS, max_tokens=1, extra_body={"prompt_cache_key": "doc-42"}
        )
    gained = [len(e.requests) - b for e, b in zip(stack.engines, before, strict=True)]
    assert sorted(gained) == [0, 0, 3], gained


async def test_failed_prompt_of_a_batch_closes_the_others(make_stack):
    bad, good = (
        Script(fail_before_first=grpc.StatusCode.INVALID_ARGUMENT),
        Script(delay_s=0.05, reply="x" * 100),
    )
    stack = await make_stack([bad, good], policy="round_robin")
    status, err, _ = await stack.post("/v1/completions", {"model": "scripted", "prompt": [[5, 6], [7, 8]]})
    assert status == 400 and err["error"]["message"] == "scripted failure"
    served = next(e for e in stack.engines if e.script is good)
    await wait_for(lambda: served.cancelled, what="the other prompt's engine call to be cancelled")
    await wait_for(
        lambda: all(e.num_outstanding == 0 for e in stack.ctx.registry.engines), what="no outstanding"
    )


async def test_prefix_affinity_spreads_short_prompts_and_keys_on_cache_salt(make_stack):
    """Through the router: short prompts (no full KV block) sent one at a time spread over the engines,
    and one long prompt goes to one engine per cache_salt, so several salts spread it."""
    stack = await make_stack([Script(block_size=64), Script(block_size=64), Script(block_size=64)])
    client = stack.client()
    for _ in range(12):
        await client.completions.create(model="scripted", prompt="Hi", max_tokens=1)
    assert [len(e.requests) for e in stack.engines] == [4, 4, 4]
    long_prompt = "A long shared prompt that fills several KV blocks of the scripted engine. " * 4
    counts = []
    for salt in (f"tenant-{i}" for i in range(12)):
        before = [len(e.requests) for e in stack.engines]
        for _ in range(3):
            await client.completions.create(
                model="scripted", prompt=long_prompt, max_tokens=1, extra_body={"cache_salt": salt}
            )
        gained = [len(e.requests) - b for e, b in zip(stack.engines, before, strict=True)]
        assert sorted(gained) == [0, 0, 3], gained  # one engine per salt
        counts.append(gained.index(3))
    assert len(set(counts)) > 1, "every salt landed on the same engine"
    assert {r.cache_salt for e in stack.engines for r in e.requests[4:]} == {f"tenant-{i}" for i in range(12)}
