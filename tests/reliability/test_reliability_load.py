"""Load: a thousand concurrent streaming clients, and a soak with a steady mix of short and long requests.

Each client's request ends ok or with a proper 429/503 (none hung, none lost); afterwards every engine is
idle with all its KV blocks free. Memory, descriptors and threads of router and engines are measured
around the runs: a leak shows as growth from one round (or one stretch of the soak) to the next, and
the router's asyncio tasks must be back to their idle count.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
from reliability_client import open_every_multiplex_call, post
from reliability_stack import Usage
from reliability_stack import chat_body as chat


def usage(stack) -> dict[str, Usage]:
    out = {"router": Usage.of(stack.routers[0].process)}
    for i, engine in enumerate(stack.engines):
        out[f"engine{i}"] = Usage.of(engine)
    return out


def tasks(router) -> int:
    """Asyncio tasks alive in the router (when idle: discovery, probes, the key-file watcher)."""
    return int(router.counter("pagoda_router_event_loop_tasks"))


async def idle_tasks(router, expected: int | None = None, within_s: float = 1.0) -> int:
    """The router's task count without the transient ones (a health probe in flight, a closing connection):
    polled every 0.1 s until it equals `expected`, else the least seen in `within_s`. A leaked task never
    goes away, so it still shows."""
    deadline, least = time.monotonic() + within_s, tasks(router)
    while least != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        least = min(least, tasks(router))
    return least


def outstanding(router) -> float:
    """The router's requests in flight, summed over engines (its own leak check)."""
    pattern = r"^pagoda_router_engine_outstanding_requests\{[^}]*\} ([0-9.e+]+)$"
    return sum(float(v) for v in re.findall(pattern, router.metrics(), re.M))


async def test_a_thousand_concurrent_streaming_clients(stack, scale, tally):
    t = tally(f"load: {scale.clients} concurrent streaming clients, 2 engines, 2 rounds")
    url = stack.routers[0].url + "/v1/chat/completions"
    stack.wait_idle()
    await open_every_multiplex_call(stack, stack.routers[0], url, lambda i: chat(i, 1))
    stack.wait_idle()
    before, tasks_before = usage(stack), await idle_tasks(stack.routers[0])
    rounds = []
    for r in range(2):  # the first round grows heaps and pools to their working size; the second must not
        # A fresh session per round: its closed connections must not count as the router's descriptors.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(post(session, url, chat(i, scale.load_max_tokens), timeout_s=scale.client_timeout_s)
                  for i in range(r * scale.clients, (r + 1) * scale.clients))
            )  # fmt: skip
            elapsed = time.monotonic() - started
        t.extend(outcomes)
        stack.wait_idle()  # KV usage back to zero: nothing running or waiting, every block free
        await asyncio.sleep(0.5)  # the router notices the closed connections
        rounds.append((elapsed, usage(stack)))
    assert outstanding(stack.routers[0]) == 0
    tasks_after = await idle_tasks(stack.routers[0], expected=tasks_before, within_s=10.0)
    assert tasks_after == tasks_before, (tasks_before, tasks_after)
    t.assert_none_hung_or_lost()
    errors = {o.status for o in t.of("error")}
    assert errors <= {429, 503}, t.details("error")
    assert t.counts["ok"] >= t.sent // 2, t.summary()  # pushback trims bursts, it does not stop them
    (s1, u1), (s2, u2) = rounds
    t.figures.update(
        {
            "seconds per round": f"{s1:.1f}/{s2:.1f}",
            **{
                f"{name} RSS MB": f"{before[name].rss_mb:.0f}->{u1[name].rss_mb:.0f}->{u2[name].rss_mb:.0f}"
                for name in before
            },  # fmt: skip
            "KV after": "all blocks free",
            "router tasks idle": f"{tasks_before}->{tasks_after}",
        }
    )
    for name in before:
        # Bounded: the first round may grow the heap to its working size; the second must not add to it.
        grown = u2[name].rss_mb - u1[name].rss_mb
        assert grown <= max(20.0, 0.1 * u1[name].rss_mb), (name, before[name], u1[name], u2[name])
        assert u2[name].fds <= before[name].fds + 8, (name, before[name], u2[name])


async def test_soak_with_a_steady_mix(stack, scale, tally):
    t = tally(f"soak: {scale.soak_s:.0f} s, {scale.soak_workers} clients, short and long requests")
    url = stack.routers[0].url + "/v1/chat/completions"
    stack.wait_idle()
    tasks_before = await idle_tasks(stack.routers[0])
    deadline = time.monotonic() + scale.soak_s
    long_tokens = min(8 * scale.load_max_tokens, 400)  # within the engines' 512-token context

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.monotonic() < deadline:
            long = (w + i) % 4 == 0
            body = chat(w * 100_000 + i, long_tokens if long else 4, stream=long)
            t.add(await post(session, url, body, timeout_s=scale.client_timeout_s))
            i += 1

    samples: list[tuple[float, dict[str, Usage]]] = []

    async def sampler() -> None:
        start = time.monotonic()
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - start, usage(stack)))
            await asyncio.sleep(scale.soak_s / 10)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(sampler(), *(worker(w, session) for w in range(scale.soak_workers)))
    stack.wait_idle()
    samples.append((scale.soak_s, usage(stack)))
    assert outstanding(stack.routers[0]) == 0
    tasks_after = await idle_tasks(stack.routers[0], expected=tasks_before, within_s=10.0)
    assert tasks_after == tasks_before, (tasks_before, tasks_after)
    t.assert_none_hung_or_lost()
    assert t.counts["ok"] == t.sent, t.details("error")
    # The first third warms up (heaps and caches reach their working size); from then on nothing grows.
    settled = next(u for at, u in samples if at >= scale.soak_s / 3)
    end = samples[-1][1]
    t.figures.update(
        {f"{name} RSS MB": f"{settled[name].rss_mb:.0f}->{end[name].rss_mb:.0f}" for name in end}
        | {f"{name} fds": f"{settled[name].fds}->{end[name].fds}" for name in end}
        | {f"{name} threads": f"{settled[name].threads}->{end[name].threads}" for name in end}
        | {"router tasks idle": f"{tasks_before}->{tasks_after}"}
    )
    for name in end:
        assert end[name].rss_mb - settled[name].rss_mb <= max(15.0, 0.05 * settled[name].rss_mb), (
            name,
            settled[name],
            end[name],
        )
        assert end[name].fds <= settled[name].fds + 4, (name, settled[name], end[name])
        assert end[name].threads <= settled[name].threads + 2, (name, settled[name], end[name])


async def test_grpc_flood_every_call_is_answered_and_logged(stack, tally):
    """3,000 Generate streams at once, straight to one engine over one channel: each is served or refused
    RESOURCE_EXHAUSTED by the engine (past --max-waiting), with a line in its log. (Issue 25: 707 of them
    ended as a bare CANCELLED the engine never saw: grpc cancels calls past its backlog of calls that wait
    for the event loop to take them.)"""
    import grpc
    from reliability_client import Outcome

    from pagoda.engine.v1 import engine_pb2 as pb
    from pagoda.engine.v1 import engine_pb2_grpc

    n = 3000
    t = tally(f"load: {n} gRPC Generate streams at once, one channel, straight to one engine")
    codes: dict[str, int] = {}
    params = pb.SamplingParams(max_tokens=1, temperature=0.0)

    async def one(stub, i: int) -> None:
        request = pb.GenerateRequest(
            request_id=f"flood-{i}",
            prompt_token_ids=pb.TokenIds(ids=[5 + i % 97, 6, 7]),
            sampling_params=params,
        )
        try:
            async for _ in stub.Generate(request, timeout=600):
                pass
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        codes[code] = codes.get(code, 0) + 1
        t.add(Outcome({"OK": "ok", "RESOURCE_EXHAUSTED": "error"}.get(code, "lost"), None, code))

    started = time.monotonic()
    async with grpc.aio.insecure_channel(stack.addresses[0]) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        await asyncio.gather(*(one(stub, i) for i in range(n)))
    seconds = time.monotonic() - started
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    logged = set(re.findall(r"request_id=(flood-\d+) ", stack.engines[0].log_tail(10**8)))
    assert len(logged) == n, f"{n - len(logged)} calls left no line in the engine's log"
    stack.wait_idle()
    t.figures.update(
        {
            "seconds": f"{seconds:.1f}",
            "served": codes.get("OK", 0),
            "refused RESOURCE_EXHAUSTED": codes.get("RESOURCE_EXHAUSTED", 0),
            "logged by the engine": len(logged),
        }
    )
