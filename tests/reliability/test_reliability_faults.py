"""Faults with real processes: an engine killed or frozen mid-stream, the tokenizer down and restarted, a
rolling restart of the engines under traffic, and clients leaving at random points.

Every request is judged (see reliability_client.py): a fault may end a stream with a proper error event,
but nothing hangs and nothing is lost, and at the end every engine is idle with all its KV blocks free.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time

import aiohttp
from reliability_client import Outcome, Tally, open_every_multiplex_call, post, seconds_until
from reliability_stack import MODEL, chat_body

LONG = 400  # tokens: a stream that lasts seconds on the tiny model (CPU or GPU), so a fault lands mid-way


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def ready(router, n: int):
    return lambda: router.health()["engines_ready"] == n


def started_on_both(stack):
    return lambda: all(stack.engine_info(i).num_running > 0 for i in range(stack.num_engines))


async def burst(s, url, first: int, n: int, max_tokens: int, timeout_s: float) -> list:
    return [
        asyncio.create_task(post(s, url, chat_body(first + i, max_tokens), timeout_s=timeout_s))
        for i in range(n)
    ]


async def test_engine_killed_mid_stream(stack, scale, tally):
    """SIGKILL: the victim's streams end with an error event; requests it had not started go elsewhere;
    the router notices at once and new requests go to the survivor."""
    t = tally("fault: engine SIGKILLed with streams in flight and requests queued on it")
    router, url = stack.routers[0], stack.routers[0].url + "/v1/chat/completions"
    victim = stack.addresses[0]
    retries_before = router.counter("pagoda_router_engine_retries_total")
    async with session() as s:
        streaming = await burst(s, url, 0, scale.fault_streams, LONG, scale.client_timeout_s)
        await seconds_until(started_on_both(stack), 30, "streams running on both engines")
        # Freeze the victim for a moment so that new requests pile up on it without a first token, then
        # kill it: it dies with streams mid-way and requests not yet started.
        stack.pause_engine(0)
        queued = await burst(s, url, 1000, 2 * scale.fault_streams, 4, scale.client_timeout_s)
        await asyncio.sleep(0.5)
        stack.kill_engine(0)
        detected_s = await seconds_until(ready(router, 1), 10, "the router to drop the killed engine")
        t.extend(await asyncio.gather(*streaming))
        queued_outcomes = await asyncio.gather(*queued)
        t.extend(queued_outcomes)
        served_before = router.engine_requests().get(victim, 0)
        after = await asyncio.gather(*await burst(s, url, 2000, 2 * scale.fault_streams, 4, 60))
        t.extend(after)
    t.assert_none_hung_or_lost()
    cut = t.of("error")
    assert cut, "no stream was cut by the kill"
    assert all(o.status == 200 and o.chunks > 0 and "engine failed" in o.detail for o in cut), t.details(
        "error"
    )
    assert all(o.kind == "ok" for o in queued_outcomes), "a request the victim had not started failed"
    retries = router.counter("pagoda_router_engine_retries_total") - retries_before
    assert retries > 0, "no request queued on the victim was retried elsewhere"
    assert all(o.kind == "ok" for o in after)
    assert router.engine_requests().get(victim, 0) == served_before, "a request went to the dead engine"
    t.figures.update(
        {
            "detected in s": f"{detected_s:.2f}",
            "streams cut with an error event": len(cut),
            "retried": int(retries),
        }
    )


async def test_engine_frozen_mid_stream(stack, scale, tally):
    """SIGSTOP: probes time out, the engine is ejected and its streams end with an error instead of
    waiting forever; after SIGCONT and a good probe it serves again."""
    t = tally("fault: engine SIGSTOPped mid-stream, then SIGCONT")
    router, url = stack.routers[0], stack.routers[0].url + "/v1/chat/completions"
    victim = stack.addresses[0]
    async with session() as s:
        streaming = await burst(s, url, 0, scale.fault_streams, LONG, scale.client_timeout_s)
        await seconds_until(started_on_both(stack), 30, "streams running on both engines")
        stack.pause_engine(0)
        frozen_at = time.monotonic()
        during = await burst(s, url, 1000, scale.fault_streams, 4, scale.client_timeout_s)
        ejected_s = await seconds_until(ready(router, 1), 15, "the router to eject the frozen engine")
        streamed = await asyncio.gather(*streaming)
        t.extend(streamed)
        t.extend(await asyncio.gather(*during))
        cut = [o for o in streamed if o.kind == "error"]
        cut_ids = {id(o) for o in cut}
        stack.resume_engine(0)
        back_s = await seconds_until(ready(router, 2), 30, "the router to take the engine back")
        served_before = router.engine_requests().get(victim, 0)
        after = await asyncio.gather(*await burst(s, url, 2000, 4 * scale.fault_streams, 4, 60))
        t.extend(after)
    t.assert_none_hung_or_lost()
    assert cut and all("stopped responding" in o.detail for o in cut), t.details("error")
    assert all(o.kind == "ok" for o in t.outcomes if id(o) not in cut_ids), t.details("error")
    last_error_s = max(o.seconds for o in cut)  # the cut streams started just before the freeze
    assert last_error_s < 20, f"a stream on the frozen engine took {last_error_s:.1f} s to end"
    assert router.engine_requests().get(victim, 0) > served_before, "the engine was not used again"
    stack.wait_idle()  # the frozen engine saw the cancellations after SIGCONT and freed every block
    t.figures.update(
        {
            "ejected after s": f"{ejected_s:.2f}",
            "streams ended with an error": len(cut),
            "serving again s after SIGCONT": f"{back_s:.2f}",
            "frozen for s": f"{time.monotonic() - frozen_at - back_s:.1f}",
        }
    )


def engine_core_pid(stack, i: int) -> int:
    """The pid of engine i's engine loop process (a spawned child of its gRPC front)."""
    import psutil

    for child in psutil.Process(stack.engines[i].popen.pid).children():
        cmdline = " ".join(child.cmdline())
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            return child.pid
    raise AssertionError("engine 0 has no engine loop process")


async def test_engine_loop_frozen_mid_stream(stack, scale, tally):
    """The engine loop's own process SIGSTOPped while the gRPC front still answers probes (issue 25: the
    router kept it ready and its streams froze for as long as it did). Its heartbeat goes silent, the engine
    says so (streams end UNAVAILABLE, probes fail, health NOT_SERVING), the router ejects it within
    seconds; after SIGCONT it serves again and frees every block."""
    t = tally("fault: engine loop process SIGSTOPped mid-stream (its gRPC front alive), then SIGCONT")
    router, url = stack.routers[0], stack.routers[0].url + "/v1/chat/completions"
    core = engine_core_pid(stack, 0)
    try:
        async with session() as s:
            streaming = await burst(s, url, 0, scale.fault_streams, LONG, scale.client_timeout_s)
            await seconds_until(started_on_both(stack), 30, "streams running on both engines")
            os.kill(core, signal.SIGSTOP)
            frozen_at = time.monotonic()
            ejected_s = await seconds_until(ready(router, 1), 20, "the router to eject the frozen engine")
            streamed = await asyncio.gather(*streaming)
            t.extend(streamed)
            cut = [o for o in streamed if o.kind == "error"]
            os.kill(core, signal.SIGCONT)
            back_s = await seconds_until(ready(router, 2), 30, "the router to take the engine back")
            after = await asyncio.gather(*await burst(s, url, 2000, 4 * scale.fault_streams, 4, 60))
            t.extend(after)
    finally:
        os.kill(core, signal.SIGCONT)
    t.assert_none_hung_or_lost()
    assert cut and all("not responded" in o.detail or "unavailable" in o.detail for o in cut), t.details(
        "error"
    )
    ended_s = max(o.seconds for o in cut)  # the cut streams started just before the freeze
    assert ended_s < 20, f"a stream on the frozen engine took {ended_s:.1f} s to end"
    assert all(o.kind == "ok" for o in after), t.details("error")
    stack.wait_idle()
    t.figures.update(
        {
            "ejected after s": f"{ejected_s:.2f}",
            "streams ended with an error": len(cut),
            "longest of them s": f"{ended_s:.1f}",
            "serving again s after SIGCONT": f"{back_s:.2f}",
            "frozen for s": f"{time.monotonic() - frozen_at - back_s:.1f}",
        }
    )


async def test_tokenizer_down_and_restarted(stack, scale, tally):
    """A clear 503 while the tokenizer is gone; token-id requests never need it; service resumes alone."""
    t = tally("fault: tokenizer stopped (SIGTERM), down, then restarted")
    token_ids = Tally("token-id completions")
    base = stack.routers[0].url
    phase = {"name": "up"}
    recovered = asyncio.Event()

    async def chats(w: int, s) -> None:
        i = 0
        while phase["name"] != "done":
            o = t.add(
                await post(s, base + "/v1/chat/completions", chat_body(w * 1000 + i, 4, stream=i % 2 == 0))
            )
            if o.kind == "error":
                assert o.status == 503 and "tokenizer" in o.detail, (o.status, o.detail)
            elif o.kind == "ok" and phase["name"] == "restarted":
                recovered.set()
            i += 1
            await asyncio.sleep(0.02)

    async def completions(s) -> None:
        while phase["name"] != "done":
            body = {"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 4, "temperature": 0}
            token_ids.add(await post(s, base + "/v1/completions", body))
            await asyncio.sleep(0.02)

    async with session() as s:
        workers = [asyncio.create_task(chats(w, s)) for w in range(4)] + [asyncio.create_task(completions(s))]
        await asyncio.sleep(1)
        phase["name"] = "down"
        await asyncio.to_thread(stack.tokenizer.stop)  # graceful: calls in flight finish, then it exits
        await asyncio.sleep(2)
        phase["name"] = "restarted"
        restarted_at = time.monotonic()
        stack.restart_tokenizer()
        await asyncio.wait_for(recovered.wait(), 60)
        recovered_s = time.monotonic() - restarted_at
        await asyncio.sleep(1)
        phase["name"] = "done"
        await asyncio.gather(*workers)
    t.assert_none_hung_or_lost()
    assert t.counts["error"] > 0, "no request met the tokenizer down"
    assert t.outcomes[-1].kind == "ok"
    assert token_ids.counts["ok"] == token_ids.sent, token_ids.summary()
    t.figures.update(
        {
            "503s while down": t.counts["error"],
            "token-id completions ok while down": f"{token_ids.counts['ok']}/{token_ids.sent}",
            "served again s after restart": f"{recovered_s:.1f} (tokenizer start included)",
        }
    )


async def test_rolling_restart_loses_nothing(stack, scale, tally):
    """Each engine in turn gets SIGTERM (drains), exits, and comes back, while clients keep sending."""
    t = tally("fault: rolling restart of both engines (SIGTERM, one at a time) under traffic")
    router, url = stack.routers[0], stack.routers[0].url + "/v1/chat/completions"
    done = asyncio.Event()

    async def client(w: int, s) -> None:
        i = 0
        while not done.is_set():
            body = chat_body(w * 100_000 + i, 16 if i % 3 else 64, stream=i % 2 == 0)
            t.add(await post(s, url, body, timeout_s=scale.client_timeout_s))
            i += 1

    restarts = []
    async with session() as s:
        clients = [asyncio.create_task(client(w, s)) for w in range(scale.fault_streams)]
        await asyncio.sleep(1)
        for i in range(stack.num_engines):
            started = time.monotonic()
            code = await asyncio.to_thread(stack.engines[i].stop, 60)  # SIGTERM: drain, then exit
            assert code == 0, stack.engines[i].log_tail()
            drained = time.monotonic()
            # Started from this thread, not a worker thread: the engine dies with the thread that started it
            # (PR_SET_PDEATHSIG, pagoda.supervised), and asyncio's worker threads end with the test's loop.
            stack.start_engine(i)
            await asyncio.to_thread(stack.wait_engine, i)
            up = time.monotonic()
            await seconds_until(ready(router, stack.num_engines), 60, f"engine {i} back in the router")
            restarts.append((drained - started, up - drained, time.monotonic() - up))
        await asyncio.sleep(1)
        done.set()
        await asyncio.gather(*clients)
    t.assert_none_hung_or_lost()
    assert t.counts["ok"] == t.sent, t.details("error")
    t.figures["drain/start/back in router s"] = ", ".join("/".join(f"{x:.1f}" for x in r) for r in restarts)


async def test_client_disconnects_free_every_block(stack, scale, tally):
    """Clients leave before the answer, mid-stream or mid-wait: every request's KV blocks are freed."""
    t = tally("fault: clients disconnecting at random points")
    router, url = stack.routers[0], stack.routers[0].url + "/v1/chat/completions"
    rng = random.Random(0)
    await open_every_multiplex_call(stack, router, url, lambda i: chat_body(i, 1))
    tasks_before = router.counter("pagoda_router_event_loop_tasks")

    async def one(i: int, s) -> None:
        how = rng.choice(["headers", "mid-stream", "mid-wait", "finish"])
        if how == "headers":
            t.add(await post(s, url, chat_body(i, LONG), leave_after=0))
        elif how == "mid-stream":
            t.add(await post(s, url, chat_body(i, LONG), leave_after=rng.randint(1, 20)))
        elif how == "mid-wait":  # a non-streaming request the client gives up on
            try:
                await asyncio.wait_for(post(s, url, chat_body(i, LONG, stream=False)), rng.uniform(0.05, 1.0))
                t.add(await post(s, url, chat_body(i, 4)))  # finished in time: count a normal one instead
            except TimeoutError:
                t.add(Outcome("left"))
        else:
            t.add(await post(s, url, chat_body(i, 8), timeout_s=scale.client_timeout_s))

    async with session() as s:
        await asyncio.gather(*(one(i, s) for i in range(scale.disconnects)))
    freed_s = await seconds_until(stack.engines_idle, 15, "every engine idle with all blocks free")
    metrics = router.metrics()
    outstanding = re.findall(
        r"^pagoda_router_engine_outstanding_requests\{[^}]*\} ([0-9.e+]+)$", metrics, re.M
    )
    assert outstanding and all(float(v) == 0 for v in outstanding), outstanding
    tasks_after = await seconds_until(
        lambda: router.counter("pagoda_router_event_loop_tasks") == tasks_before,
        5,
        "the router's tasks to end",
    )
    t.assert_none_hung_or_lost()
    assert t.counts["left"] > scale.disconnects // 2, t.summary()
    t.figures.update({"all blocks free after s": f"{freed_s:.2f}", "running/waiting after": "0/0"})
    t.figures["router tasks back to idle after s"] = f"{tasks_after:.2f}"
