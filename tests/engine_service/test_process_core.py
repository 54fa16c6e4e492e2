"""The engine loop in a process of its own (--engine-core process); a dead engine process fails fast."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.scripted_model import SCRIPTS
from tests.engine_service.server_thread import ServerThread, tiny_config


def request(ids, **params) -> pb.GenerateRequest:
    sp = pb.SamplingParams(**{"temperature": 0.0, **params})
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=ids), sampling_params=sp)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerThread(tiny_config(tiny_model_dir), engine_core="process", step_timeout_s=30) as s:
        yield s


def test_streams_text_and_stop_strings(server, scripts):
    msgs = list(server.stub.Generate(request(scripts["emoji"][:1], max_tokens=64), timeout=30))
    assert "".join(m.text for m in msgs) == SCRIPTS["emoji"][0][len("Hi") :]
    msgs = list(server.stub.Generate(request(scripts["stop"][:1], stop=["ty-tw"]), timeout=30))
    assert "".join(m.text for m in msgs) == " answer is for" and msgs[-1].stop_reason == "ty-tw"


def test_engine_limits_are_checked_in_the_engine_process(server):
    with pytest.raises(grpc.RpcError) as e:
        list(server.stub.Generate(request([7] * 3000), timeout=30))
    assert (
        e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt has 3000 tokens" in e.value.details()
    )
    with pytest.raises(grpc.RpcError) as e:
        list(server.stub.Generate(request([5], temperature=-1.0), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in e.value.details()


def test_cancel_frees_blocks(server, scripts):
    stream = server.stub.Generate(request(scripts["loop"][:1], max_tokens=900), timeout=30)
    next(stream)
    stream.cancel()
    from tests.engine_service.test_abort import wait_for_free_blocks

    assert wait_for_free_blocks(server.stub).kv_cache_usage == 0.0


def test_killed_engine_process_fails_streams_and_exits_nonzero(tiny_model_dir, scripts):
    with ServerThread(tiny_config(tiny_model_dir), engine_core="process") as s:
        stream = s.stub.Generate(request(scripts["loop"][:1], max_tokens=900), timeout=30)
        next(stream)
        os.kill(s.server.engine._core._process.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as e:
            list(stream)
        assert e.value.code() == grpc.StatusCode.INTERNAL and "engine process died" in e.value.details()
        assert s.wait() == 1
