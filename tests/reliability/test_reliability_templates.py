"""Issue 25, breaks 1 and 2, with real processes: request-supplied chat templates and prompts that cannot fit.

Request templates are refused by default (router and tokenizer each); where an operator allows them they
render in sandboxed worker processes with limits on time, memory and output, and a template that errs,
loops, computes for minutes or eats memory is a 400 while ordinary chat goes on. A prompt larger than the
model's context is a 400 at once, from its length in bytes, before anything tokenizes it; so is the same
text sent straight to the tokenizer or the engine over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
import pytest
from reliability_client import Outcome, post
from reliability_stack import MODEL, Usage, chat_body

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from tests.router.router_processes import Process, free_port, wait_until

CHAT = "/v1/chat/completions"
BOMBS = {  # template -> what it does to a renderer without limits (issue 25)
    "{{ 1/0 }}": "ZeroDivisionError: a 500 before",
    "{{ (7 ** 30000000) % 10 }}": "one C call of 24 s: the whole process froze",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}": "nested loops",
    "{% set x = ['a'] * 10**8 %}{{ x | length }}": "800 MB of list",
    "{{ 'a' * 10**10 }}": "10 GB of string: grew the tokenizer until the kernel killed it",
}


def chat_with_template(template: str) -> dict:
    return {**chat_body(0, 2, stream=False), "chat_template": template}


async def raw(s, url: str, body: dict) -> tuple[int, dict]:
    async with s.post(url + CHAT, json=body) as r:
        return r.status, json.loads(await r.read())


async def test_request_templates_are_refused_by_default(stack, tally):
    t = tally("security: request chat templates refused by default (router 400, tokenizer INVALID_ARGUMENT)")
    async with aiohttp.ClientSession() as s:
        status, body = await raw(s, stack.routers[0].url, chat_with_template("{{ messages[0].content }}"))
    assert status == 400 and body["error"]["param"] == "chat_template", body
    assert "--trust-request-chat-template" in body["error"]["message"]
    t.add(Outcome("error", status))
    with grpc.insecure_channel(f"127.0.0.1:{stack.tokenizer_port}") as channel:
        chat = tokenizer_pb2.ChatInput(
            messages=[tokenizer_pb2.ChatMessage(role="user", content="hi")], chat_template="{{ 1 }}"
        )
        with pytest.raises(grpc.RpcError) as err:
            tokenizer_pb2_grpc.TokenizerServiceStub(channel).Encode(
                tokenizer_pb2.EncodeRequest(chat=chat), timeout=10
            )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("chat.chat_template:"), err.value.details()
    t.add(Outcome("error", None, "INVALID_ARGUMENT"))


@pytest.fixture(scope="module")
def trusting(shared_stack, tmp_path_factory):
    """A tokenizer and a router that accept request templates, in front of the session's engines."""
    port = free_port()
    args = ["tokenizer", "--model", str(shared_stack.model_dir), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--metrics-port", "0", "--workers", "1", "--trust-request-chat-template"]
    args += ["--template-workers", "2", "--template-timeout", "2", "--template-memory-mb", "256"]
    tokenizer = Process(args, tmp_path_factory.mktemp("trusting"), "trusting-tokenizer")
    try:
        router = shared_stack.start_router(
            "--trust-request-chat-template", "--tokenizer", f"127.0.0.1:{port}"
        )
        wait_until(lambda: _encode_ok(port), 120, "the trusting tokenizer", [tokenizer])
    except BaseException:
        tokenizer.stop()
        raise
    yield router, tokenizer
    router.process.stop()
    shared_stack.routers.remove(router)
    tokenizer.stop()


def _encode_ok(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        tokenizer_pb2_grpc.TokenizerServiceStub(channel).Encode(
            tokenizer_pb2.EncodeRequest(text="hi"), timeout=2
        )
    return True


async def test_request_templates_render_in_a_sandbox_when_allowed(stack, trusting, tally):
    t = tally("security: request chat templates under limits (errors, CPU, loops, memory) while chat goes on")
    router, tokenizer = trusting
    tokenizer_pid = tokenizer.popen.pid
    async with aiohttp.ClientSession() as s:
        status, body = await raw(s, router.url, chat_with_template("{{ messages[0].content }}!"))
        assert status == 200, body  # allowed: a good template renders
        t.add(Outcome("ok", status))
        steady = asyncio.Event()
        latencies: list[float] = []

        async def ordinary_chat() -> None:  # the model's own template, all along
            i = 0
            while not steady.is_set():
                started = time.monotonic()
                o = t.add(await post(s, router.url + CHAT, chat_body(100 + i, 2, stream=False)))
                assert o.kind == "ok", o
                latencies.append(time.monotonic() - started)
                i += 1

        chatting = asyncio.create_task(ordinary_chat())
        answers = await asyncio.gather(*(raw(s, router.url, chat_with_template(b)) for b in BOMBS))
        steady.set()
        await chatting
    peak_mb = Usage.of(tokenizer).rss_mb
    for (template, harm), (status, body) in zip(BOMBS.items(), answers, strict=True):
        assert status == 400 and body["error"]["param"] == "chat_template", (template, harm, body)
        t.add(Outcome("error", status, template))
    assert latencies and max(latencies) < 2.0, f"ordinary chat took up to {max(latencies):.2f} s"
    assert peak_mb < 1500, f"the tokenizer and its workers hold {peak_mb:.0f} MB"
    assert tokenizer.alive() and tokenizer.popen.pid == tokenizer_pid
    t.figures.update(
        {
            "templates refused": len(BOMBS),
            "ordinary chats meanwhile": len(latencies),
            "their slowest s": f"{max(latencies):.2f}",
            "tokenizer + workers RSS MB after": f"{peak_mb:.0f}",
        }
    )


async def test_sigterm_stops_a_tokenizer_stuck_in_a_template(shared_stack, tmp_path_factory):
    """A render that computes for minutes neither holds up SIGTERM nor outlives the service."""
    import psutil

    port = free_port()
    args = ["tokenizer", "--model", str(shared_stack.model_dir), "--host", "127.0.0.1", "--port", str(port)]
    args += [
        "--metrics-port",
        "0",
        "--workers",
        "1",
        "--trust-request-chat-template",
        "--template-timeout",
        "60",
    ]
    tokenizer = Process(args, tmp_path_factory.mktemp("stuck"), "stuck-tokenizer")
    wait_until(lambda: _encode_ok(port), 60, "the tokenizer", [tokenizer])
    workers = psutil.Process(tokenizer.popen.pid).children(recursive=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        chat = tokenizer_pb2.ChatInput(
            messages=[tokenizer_pb2.ChatMessage(role="user", content="hi")],
            chat_template="{{ (7 ** 300000000) % 10 }}",
        )
        stuck = tokenizer_pb2_grpc.TokenizerServiceStub(channel).Encode.future(
            tokenizer_pb2.EncodeRequest(chat=chat), timeout=120
        )
        time.sleep(1)
        started = time.monotonic()
        tokenizer.popen.terminate()
        tokenizer.popen.wait(20)
        stopped_s = time.monotonic() - started
        with pytest.raises(grpc.RpcError):
            stuck.result(10)
    assert stopped_s < 15, f"the tokenizer took {stopped_s:.1f} s to stop"
    assert workers and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


# ---- prompts that cannot fit (break 2) ------------------------------------------------------------------

HUGE = "lorem ipsum dolor sit amet " * 800_000  # 21.6 MB: ~5M tokens against a 512-token context


async def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(stack, tally):
    t = tally("bad input: 21 MB prompts (chat, completions, /tokenize, gRPC tokenizer and engine)")
    url = stack.routers[0].url
    before = Usage.of(stack.tokenizer)
    cases = [
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": HUGE}], "max_tokens": 1}),
        ("/v1/completions", {"model": MODEL, "prompt": HUGE, "max_tokens": 1}),
        ("/tokenize", {"model": MODEL, "prompt": HUGE}),
    ]
    seconds = []
    async with aiohttp.ClientSession() as s:
        for path, body in cases:
            started = time.monotonic()
            async with s.post(url + path, json=body) as r:
                answer = json.loads(await r.read())
                seconds.append(time.monotonic() - started)
                assert r.status == 400 and answer["error"]["code"] == "context_length_exceeded", (
                    path,
                    answer,
                )
                t.add(Outcome("error", r.status, path))
        # Still serving.
        t.add(o := await post(s, url + CHAT, chat_body(1, 4)))
        assert o.kind == "ok", o
    with grpc.insecure_channel(f"127.0.0.1:{stack.tokenizer_port}") as channel:  # no max_tokens given
        with pytest.raises(grpc.RpcError) as err:
            tokenizer_pb2_grpc.TokenizerServiceStub(channel).Encode(
                tokenizer_pb2.EncodeRequest(text=HUGE), timeout=10
            )
        assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE, err.value
    with grpc.insecure_channel(stack.addresses[0]) as channel:
        request = engine_pb2.GenerateRequest(
            text=HUGE, sampling_params=engine_pb2.SamplingParams(max_tokens=1)
        )
        with pytest.raises(grpc.RpcError) as err:
            next(engine_pb2_grpc.EngineServiceStub(channel).Generate(request, timeout=10))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value
    t.extend([Outcome("error", None, "OUT_OF_RANGE"), Outcome("error", None, "INVALID_ARGUMENT")])
    after = Usage.of(stack.tokenizer)
    grown = after.rss_mb - before.rss_mb
    assert max(seconds) < 10, seconds  # it was 30 s and a 503
    # A few copies of the prompt at most (gRPC's buffers, the message, the rendered chat): it was ~175
    # bytes of memory per byte of prompt, 3.7 GB for this one, and 30 s before a 503.
    copies = grown * 2**20 / len(HUGE)
    assert copies < 15, f"the tokenizer grew by {grown:.0f} MB, {copies:.1f} times the prompt"
    t.figures.update(
        {
            "slowest refusal s": f"{max(seconds):.2f}",
            "tokenizer RSS MB": f"{before.rss_mb:.0f}->{after.rss_mb:.0f}",
            "growth in prompt sizes": f"{copies:.1f}",
        }
    )
