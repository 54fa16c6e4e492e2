"""Multiplex over real gRPC on the scripted tiny Llama: many generations on one stream, each with
Generate's messages, statuses and cancellation; what a slow reader has not read leaves merged."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import grpc
import pytest

from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from tests.engine_service.scripted_model import SCRIPTS
from tests.engine_service.server_thread import ServerThread, tiny_config, tiny_engine
from tests.engine_service.test_abort import wait_for_free_blocks


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerThread(tiny_engine(tiny_model_dir)) as s:
        yield s


def generate(ids, request_id="", **params) -> pb.GenerateRequest:
    sp = pb.SamplingParams(**{"temperature": 0.0, **params})
    return pb.GenerateRequest(
        request_id=request_id, prompt_token_ids=pb.TokenIds(ids=ids), sampling_params=sp
    )


class Mux:
    """One Multiplex call from a real stub: `send` queues request messages, `responses` reads."""

    def __init__(self, stub, timeout: float = 30):
        self._requests: queue.Queue = queue.Queue()
        self.responses = stub.Multiplex(iter(self._requests.get, None), timeout=timeout)

    def send(self, **kw) -> None:
        self._requests.put(pb.MultiplexRequest(**kw))

    def close(self) -> None:
        self._requests.put(None)

    def collect(self, handles: set[int]) -> tuple[dict[int, list[pb.GenerateResponse]], dict, list]:
        """Until every handle ended (its usage, or an error): (messages, errors, responses) by handle."""
        messages: dict[int, list[pb.GenerateResponse]] = {h: [] for h in handles}
        errors: dict[int, tuple[int, str]] = {}
        responses = []
        open_ = set(handles)
        while open_:
            response = next(self.responses)
            responses.append(response)
            for m in response.messages:
                if m.error_code:
                    errors[m.handle] = (m.error_code, m.error_message)
                    open_.discard(m.handle)
                    continue
                messages[m.handle].append(m.response)
                if m.response.HasField("usage"):
                    open_.discard(m.handle)
        return messages, errors, responses


def tokens(msgs) -> list[int]:
    return [t for m in msgs for t in m.token_ids]


def test_generations_on_one_stream_get_what_generate_sends(server, scripts):
    loop, emoji = scripts["loop"], scripts["emoji"]
    mux = Mux(server.stub)
    mux.send(handle=1, generate=generate(emoji[:1], max_tokens=64))
    mux.send(handle=2, generate=generate(loop[:1], max_tokens=9))
    mux.send(handle=3, generate=generate(loop[:1], n=2, max_tokens=4, temperature=1.0, seed=3))
    messages, errors, responses = mux.collect({1, 2, 3})
    mux.close()
    assert list(mux.responses) == [] and not errors  # the call ends once its side is closed
    for handle, req in ((1, generate(emoji[:1], max_tokens=64)), (2, generate(loop[:1], max_tokens=9))):
        alone = list(server.stub.Generate(req, timeout=30))
        assert tokens(messages[handle]) == tokens(alone)
        assert "".join(m.text for m in messages[handle]) == "".join(m.text for m in alone)
        assert messages[handle][-1].usage == alone[-1].usage
        assert messages[handle][-1].finish_reason == alone[-1].finish_reason
    assert "".join(m.text for m in messages[1]) == SCRIPTS["emoji"][0][len("Hi") :]
    n2 = messages[3]
    assert sorted(m.index for m in n2 if m.finish_reason) == [0, 1] and n2[-1].usage.completion_tokens == 8
    for response in responses:  # at most one message per sample of a generation in each response
        keys = [(m.handle, m.response.index) for m in response.messages]
        assert len(keys) == len(set(keys))


def test_bad_requests_fail_their_generation_alone(server, scripts):
    loop = scripts["loop"]
    mux = Mux(server.stub)
    mux.send(handle=7, generate=generate(loop[:1], max_tokens=200))
    mux.send(handle=8, generate=generate(loop[:1], temperature=-1.0))
    mux.send(handle=9, generate=generate([7] * 5000))
    mux.send(handle=7, generate=generate(loop[:1]))  # a live handle
    mux.send(handle=10)  # no action
    mux.close()
    errors: dict[int, list[tuple[int, str]]] = {}
    good = []
    for m in (m for r in mux.responses for m in r.messages):  # the call ends when every one ended
        if m.error_code:
            errors.setdefault(m.handle, []).append((m.error_code, m.error_message))
        else:
            good.append(m)
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [e[0] for es in errors.values() for e in es] == [invalid] * 4
    assert "temperature" in errors[8][0][1] and "prompt has 5000 tokens" in errors[9][0][1]
    assert "in use" in errors[7][0][1] and "action" in errors[10][0][1]
    assert {m.handle for m in good} == {7}  # the first generation of handle 7 ran to its end
    assert len(tokens(m.response for m in good)) == 200 and good[-1].response.usage.completion_tokens == 200


def test_cancel_aborts_one_generation_and_frees_its_blocks(server, scripts):
    loop = scripts["loop"]
    mux = Mux(server.stub)
    mux.send(handle=1, generate=generate(loop[:1], max_tokens=1000))
    mux.send(handle=2, generate=generate(loop[:1], max_tokens=5))
    seen: set[int] = set()
    while 1 not in seen:
        seen |= {m.handle for m in next(mux.responses).messages}
    mux.send(handle=1, cancel=True)
    mux.close()
    rest = [m for r in mux.responses for m in r.messages]  # the call ends: handle 1 ended too
    assert tokens(m.response for m in rest if m.handle == 2)
    assert wait_for_free_blocks(server.stub).kv_cache_usage == 0.0


def test_cancelling_the_call_aborts_every_generation(server, scripts):
    mux = Mux(server.stub)
    for handle in range(3):
        mux.send(handle=handle, generate=generate(scripts["loop"][:1], max_tokens=1000))
    seen: set[int] = set()
    while len(seen) < 3:
        seen |= {m.handle for m in next(mux.responses).messages}
    mux.responses.cancel()
    info = wait_for_free_blocks(server.stub)
    assert info.kv_cache_usage == 0.0 and info.num_running == 0


def test_a_reader_that_falls_behind_gets_merged_messages(server, scripts):
    """While the caller does not read, the engine keeps stepping; once the stream's flow-control window
    is full (a fixed one, as the router's channel options make it: no bandwidth probing), what piles up
    leaves merged, every token in order, instead of one queued message per step."""
    loop = scripts["loop"]
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
    channel = grpc.insecure_channel(server.address, options=options)
    mux = Mux(engine_pb2_grpc.EngineServiceStub(channel))
    # 20 top logprobs with their texts: ~300 bytes a token, so that the window fills early.
    mux.send(handle=1, generate=generate(loop[:1], max_tokens=600, logprobs=20))
    first = next(mux.responses)
    deadline = time.monotonic() + 60
    while server.stub.GetServerInfo(pb.GetServerInfoRequest()).num_running and time.monotonic() < deadline:
        time.sleep(0.05)  # the engine runs to the end meanwhile: the stream holds what was not sent
    messages, _, responses = mux.collect({1})
    mux.close()
    channel.close()
    got = tokens(m.response for m in first.messages) + tokens(messages[1])
    assert len(got) == 600 and got[:3] == loop[1:] + loop[:1]
    assert sum(len(m.response.logprobs) for r in [first, *responses] for m in r.messages) == 600
    assert len(responses) < 300  # one per step would be ~600


def test_undecodable_request_bytes_fail_the_call(server):
    channel = server.channel
    call = channel.stream_stream("/pagoda.engine.v1.EngineService/Multiplex")
    done = threading.Event()

    def requests():
        yield b"\xff\xff\xff"
        done.wait(10)

    with pytest.raises(grpc.RpcError) as e:
        list(call(requests(), timeout=10))
    done.set()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in e.value.details()


def test_an_engine_process_that_dies_fails_every_generation_with_generates_error(tiny_model_dir, scripts):
    """What a Generate call ends with (INTERNAL, "engine process died"), each generation gets as its
    error_code; the call then ends, and the server exits non-zero (its pod restarts)."""
    with ServerThread(tiny_config(tiny_model_dir), engine_core="process") as s:
        mux = Mux(s.stub)
        for handle in (1, 2):
            mux.send(handle=handle, generate=generate(scripts["loop"][:1], max_tokens=900))
        seen: set[int] = set()
        while len(seen) < 2:
            seen |= {m.handle for m in next(mux.responses).messages}
        os.kill(s.server.engine._core._process.pid, signal.SIGKILL)
        _, errors, _ = mux.collect({1, 2})
        mux.close()
        internal = grpc.StatusCode.INTERNAL.value[0]
        assert {h: code for h, (code, _) in errors.items()} == {1: internal, 2: internal}
        assert all("engine process died" in message for _, message in errors.values())
        assert s.wait() == 1


def test_text_that_cannot_fit_is_refused_unread_as_by_generate(server, scripts):
    """Issue 25, break 2, on Multiplex too: a text prompt longer than the context could ever hold is
    INVALID_ARGUMENT from its length alone (it used to be tokenized whole first), the stream goes on."""
    huge = "lorem ipsum dolor sit amet " * 200_000  # 5.4 MB against a tiny context
    request = pb.GenerateRequest(text=huge, sampling_params=pb.SamplingParams(max_tokens=1))
    mux = Mux(server.stub)
    started = time.monotonic()
    mux.send(handle=1, generate=request)
    _, errors, _ = mux.collect({1})
    assert errors[1][0] == grpc.StatusCode.INVALID_ARGUMENT.value[0], errors
    assert "longer than this model's context" in errors[1][1], errors
    assert time.monotonic() - started < 5
    mux.send(handle=2, generate=generate(scripts["loop"][:1], max_tokens=2))
    messages, errors, _ = mux.collect({2})
    mux.close()
    assert not errors and len(tokens(messages[2])) == 2
