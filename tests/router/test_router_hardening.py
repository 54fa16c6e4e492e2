"""Issue 25, router side: bodies (compressed, announced too large, huge, slow), connections (idle, slow
headers, past the cap), and limits that count sequences and bytes, not requests. A real router on a free
port in front of the scripted tokenizer and engines, real clients (aiohttp, raw sockets, the openai SDK)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import zlib

import aiohttp
import openai
import pytest
from router_fakes import Script

from tests.router.conftest import wait_for

MSGS = [{"role": "user", "content": "hi"}]
CHAT = {"model": "scripted", "messages": MSGS, "max_tokens": 4}


async def raw_post(stack, body: bytes, headers: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(stack.url + "/v1/chat/completions", data=body, headers=headers) as r:
            return r.status, json.loads(await r.read())


# ---- Content-Encoding (issue 25, break 9) -------------------------------------------------------------


async def test_compressed_bodies_are_decoded_or_refused_never_a_500(make_stack):
    stack = await make_stack(max_body_bytes=1 << 20)
    plain = json.dumps(CHAT).encode()
    kinds = {"Content-Type": "application/json"}
    status, body = await raw_post(stack, gzip.compress(plain), {**kinds, "Content-Encoding": "gzip"})
    assert status == 200 and body["choices"][0]["message"]["content"], body
    status, body = await raw_post(stack, zlib.compress(plain), {**kinds, "Content-Encoding": "deflate"})
    assert status == 200, body
    # A body that says gzip and is not: a 400 that says so (it was a 500 with a traceback).
    status, body = await raw_post(stack, plain, {**kinds, "Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in body["error"]["message"], body
    # A zip bomb: 1 KB that inflates to 64 MB is refused at the body limit, not inflated whole.
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")
    assert len(bomb) < 100_000
    status, body = await raw_post(stack, bomb, {**kinds, "Content-Encoding": "gzip"})
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    status, body = await raw_post(stack, plain, {**kinds, "Content-Encoding": "br"})
    assert status == 415, body


async def test_expect_100_continue_with_a_huge_length_gets_413_before_the_body(make_stack):
    stack = await make_stack(max_body_bytes=1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\nExpect: 100-continue\r\n\r\n"
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"413", status_line  # not "100 Continue"
    # Without Expect, a Content-Length over the limit is refused before the body is read, too.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\n\r\n{"
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"413", status_line


# ---- bodies parsed off the event loop (break 7) -------------------------------------------------------


async def test_large_bodies_do_not_stall_another_clients_stream(make_stack):
    """Three 18 MB bodies (token ids: the slowest JSON to parse) arrive while another client streams; the
    stream's longest gap between chunks stays small (it was seconds: json.loads held the event loop)."""
    stack = await make_stack([Script(delay_s=0.01, reply="x" * 200)])
    big = json.dumps({"model": "scripted", "prompt": [[7] * 6_000_000], "max_tokens": 1}).encode()
    started = time.monotonic()
    json.loads(big)  # what one body held the event loop for when it was parsed there, on this machine now
    parse_s = time.monotonic() - started
    gaps: list[float] = []

    async def stream(session) -> None:
        body = {"model": "scripted", "messages": MSGS, "stream": True, "max_tokens": 300, "ignore_eos": True}
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            last = time.monotonic()
            async for _ in r.content:
                now = time.monotonic()
                gaps.append(now - last)
                last = now

    async def post_big(session) -> int:
        async with session.post(
            stack.url + "/v1/completions", data=big, headers={"Content-Type": "application/json"}
        ) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as session:
        streaming = asyncio.create_task(stream(session))
        await wait_for(lambda: len(gaps) > 5, what="the stream to start")
        statuses = await asyncio.gather(*(post_big(session) for _ in range(3)))
        await streaming
    assert statuses == [400, 400, 400]  # the prompt cannot fit the model: refused, after parsing
    worst = max(gaps[5:])
    # Parsed on the event loop, each body held it for a whole json.loads (parse_s: 2-6 s on the 2-core
    # test machine). Off the loop, what is left is scheduling (the parser process takes a core from this
    # one, and a loaded machine has few to give): a bound relative to parse_s holds wherever it runs.
    bound = max(0.5, parse_s / 3)
    assert worst < bound, f"the stream stalled for {worst:.2f} s (one parse: {parse_s:.2f} s)"


async def test_slow_body_gets_408(make_stack):
    stack = await make_stack(body_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"408", status_line


# ---- connections (break 4) ----------------------------------------------------------------------------


def closed_within(sock: socket.socket, timeout_s: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed `sock` (None: still open after timeout_s); sends `trickle` a byte
    every 0.1 s meanwhile (slow headers)."""
    started = time.monotonic()
    sock.settimeout(0.1)
    sent = 0
    while time.monotonic() - started < timeout_s:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - started
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
    return None


async def test_idle_and_slow_header_connections_are_closed(make_stack):
    stack = await make_stack(idle_timeout_s=0.5)
    idle = socket.create_connection(("127.0.0.1", stack.port))
    slow = socket.create_connection(("127.0.0.1", stack.port))
    headers = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    closed = await asyncio.gather(
        asyncio.to_thread(closed_within, idle, 5), asyncio.to_thread(closed_within, slow, 5, headers)
    )
    idle.close()
    slow.close()
    assert closed[0] is not None and closed[0] < 2, f"an idle connection lived {closed[0]} s"
    assert closed[1] is not None and closed[1] < 2, f"a connection trickling headers lived {closed[1]} s"
    # A keep-alive client that is not idle is served as usual.
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(stack.url + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
            await asyncio.sleep(0.2)


async def test_connections_past_the_cap_get_a_clean_503(make_stack):
    stack = await make_stack(max_connections=4)
    held = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(4)]
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"Retry-After: 1" in answer and b"too many open connections" in answer
    for s in held:
        s.close()
    await asyncio.sleep(0.2)
    status, _, _ = await stack.get("/health")
    assert status == 200


# ---- limits count sequences, bytes and tokens (break 5) ----------------------------------------------


async def test_one_request_cannot_ask_for_thousands_of_sequences(make_stack):
    stack = await make_stack(max_sequences_per_request=256)
    body = {"model": "scripted", "prompt": [[5, 6]] * 256, "n": 128, "max_tokens": 1}
    status, answer, _ = await stack.post("/v1/completions", body)
    assert status == 400 and answer["error"]["code"] == "too_many_sequences", answer
    status, answer, _ = await stack.post("/v1/completions", {**body, "prompt": [[5, 6]] * 2})
    assert status == 200 and len(answer["choices"]) == 256, answer


async def test_per_key_budget_counts_sequences_and_tokens(make_stack):
    stack = await make_stack(
        [Script(delay_s=0.02)], max_concurrent_streams_per_key=4, max_concurrent_tokens_per_key=2000
    )
    client = stack.client()
    long = asyncio.create_task(
        client.chat.completions.create(
            model="scripted", messages=MSGS, n=4, max_tokens=40, extra_body={"ignore_eos": True}
        )
    )
    await wait_for(lambda: stack.ctx.streams.in_flight("") == 4, what="the n=4 request to hold its budget")
    with pytest.raises(openai.RateLimitError) as err:  # one more sequence is past the key's 4
        await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
    assert "sequences" in err.value.message
    assert len((await long).choices) == 4
    # A request that could never fit the key's budget is a 400, not a 429 to retry forever.
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="scripted", messages=MSGS, n=5, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=3000)
    assert "tokens" in err.value.message


async def test_non_streaming_answers_are_bounded_in_size(make_stack):
    stack = await make_stack([Script(reply="y" * 400)], max_response_bytes=4096)
    body = {**CHAT, "n": 128, "logprobs": True, "top_logprobs": 20, "max_tokens": 400}
    status, answer, _ = await stack.post("/v1/chat/completions", body)
    assert status == 400 and answer["error"]["code"] == "response_too_large", answer
    assert "stream" in answer["error"]["message"]
    # Without logprobs the answer is counted as it comes: 16 x 400 bytes of text pass the limit mid-way.
    status, answer, _ = await stack.post("/v1/chat/completions", {**CHAT, "n": 16, "max_tokens": 400})
    assert status == 400 and answer["error"]["code"] == "response_too_large", answer
    await wait_for(lambda: not stack.engines[0].active, what="the engine calls to be cancelled")
    # Streamed, the same request is fine: nothing is held.
    async with aiohttp.ClientSession() as session:
        body = {**CHAT, "n": 8, "max_tokens": 400, "stream": True}
        async with session.post(stack.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_a_probe_refused_for_load_is_not_a_dead_engine(make_stack):
    """RESOURCE_EXHAUSTED to a probe says busy (it answered); UNAVAILABLE says down."""
    import grpc

    stack = await make_stack([Script(), Script()])
    busy, down = stack.engines
    busy.script.probe_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    down.script.probe_error = grpc.StatusCode.UNAVAILABLE
    engines = {e.address: e for e in stack.ctx.registry.engines}
    by_port = {p: engines[f"127.0.0.1:{p}"] for p in stack.engine_ports}
    await wait_for(lambda: not by_port[stack.engine_ports[1]].ready, what="the unavailable engine to go")
    await asyncio.sleep(0.5)  # ten probe intervals
    assert by_port[stack.engine_ports[0]].ready


async def test_a_busy_engine_is_not_ejected(make_stack):
    """No first token within --first-token-timeout means busy, not dead: the request is retried on the
    other engine, and the slow one stays in service (it used to be ejected, and with both engines busy
    the router answered 503 to everyone)."""
    stack = await make_stack(
        [Script(first_token_delay_s=1.0), Script()], policy="round_robin", first_token_timeout_s=0.3
    )
    client = stack.client()
    for _ in range(4):
        r = await client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
        assert r.choices[0].finish_reason == "length"
    assert all(e.ready for e in stack.ctx.registry.engines), stack.ctx.registry.engines


# ---- descriptors exhausted, logs flooded (break 4), with a real router process --------------------------


def test_a_connection_flood_within_a_small_descriptor_limit(tmp_path):
    """A router limited to 256 descriptors, 600 idle connections opened at it: it keeps within its
    descriptors (a 503 to the excess, /health answered), and its log stays small. (Issue 25: 19,990 idle
    connections exhausted the descriptors; accept() then failed hundreds of times a second, each time with
    a traceback in the log: 110 MB in 44 s, and every real request timed out.)"""
    import resource
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from router_processes import REPO, free_port

    port = free_port()
    log_path = tmp_path / "router.log"
    command = [sys.executable, "-m", "pagoda.cli", "router", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--engine", "127.0.0.1:9", "--tokenizer", "127.0.0.1:9", "--idle-timeout", "30"]

    def limit() -> None:  # in the child, before exec: 256 descriptors, soft and hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log_path, "wb") as log:
        router = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, preexec_fn=limit)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(600):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass
        time.sleep(2)

        def health() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()

        status, body = health()  # answered at once: a clean refusal
        assert status == 503 and b"too many open connections" in body, (status, body)
        for s in held:
            s.close()
        held.clear()
        time.sleep(1)
        status, body = health()  # served again ("unavailable": this router has no engine)
        assert status == 503 and b"engines_ready" in body, (status, body)
        assert router.poll() is None, log_path.read_text()[-2000:]
        text = log_path.read_text()
        assert len(text) < 50_000, f"{len(text)} bytes of log: {text[-1500:]}"
        assert "out of system resource" not in text and "Too many open files" not in text, text[-1500:]
    finally:
        for s in held:
            s.close()
        router.terminate()
        router.wait(20)


def test_repeated_errors_are_held_back_in_the_logs():
    """The same warning or error past 10 a minute is dropped, then counted in the next line let through."""
    import logging

    from pagoda.telemetry.logging import RepeatFilter

    f = RepeatFilter(burst=10, window_s=60)
    kept = 0
    for i in range(1000):
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", (), None)
        record.created = 1000.0 + i * 0.01
        kept += f.filter(record)
    assert kept == 10
    later = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", (), None)
    later.created = 1061.0
    assert f.filter(later) and "990 more like this" in later.getMessage()
    info = logging.LogRecord("router.requests", logging.INFO, __file__, 1, "POST %s", ("/x",), None)
    assert all(f.filter(info) for _ in range(100))  # one line per request, by design: never held back


async def test_a_large_body_of_token_ids_is_served_through_the_body_pool(make_stack):
    """A valid body over the inline limit (parsed in the worker process, its long token-id lists back as
    arrays) is served like a small one, echo included."""
    stack = await make_stack([Script(max_model_len=4096, reply="ok")])
    prompts = [[100 + (i + j) % 150 for j in range(3000)] for i in range(50)]
    body = {"model": "scripted", "prompt": prompts, "max_tokens": 2, "echo": True}
    assert len(json.dumps(body)) > 256 * 1024
    status, answer, _ = await stack.post("/v1/completions", body)
    assert status == 200 and len(answer["choices"]) == 50, answer
    assert answer["usage"]["prompt_tokens"] == 50 * 3000
    assert answer["choices"][7]["text"].startswith(bytes(t - 3 for t in prompts[7][:20]).decode())
    sent = [list(r.prompt_token_ids.ids) for r in stack.engines[0].requests[-50:]]
    assert sorted(sent) == sorted(prompts)
