"""Cancelling a stream or calling Abort frees the request's KV blocks; a full waiting queue is refused."""

from __future__ import annotations

import time

import grpc
import pytest

from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from tests.engine_service.server_thread import ServerThread, tiny_engine


def long_request(scripts, request_id="", **params) -> pb.GenerateRequest:
    sp = pb.SamplingParams(temperature=0.0, max_tokens=900, **params)
    return pb.GenerateRequest(
        request_id=request_id, prompt_token_ids=pb.TokenIds(ids=scripts["loop"][:1]), sampling_params=sp
    )


def server_info(stub) -> pb.ServerInfo:
    return stub.GetServerInfo(pb.GetServerInfoRequest())


def wait_for_free_blocks(stub, timeout=5.0) -> pb.ServerInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = server_info(stub)
        if info.kv_cache_usage == 0.0 or time.monotonic() > deadline:
            return info
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerThread(tiny_engine(tiny_model_dir)) as s:
        yield s


def test_cancel_mid_stream_frees_the_blocks(server, scripts):
    stream = server.stub.Generate(long_request(scripts), timeout=30)
    received = [next(stream) for _ in range(3)]
    assert all(m.token_ids for m in received)
    busy = server_info(server.stub)
    assert busy.num_running == 1 and busy.kv_cache_usage > 0
    stream.cancel()
    info = wait_for_free_blocks(server.stub)
    assert (info.num_running, info.num_waiting, info.kv_cache_usage) == (0, 0, 0.0)
    assert info.num_free_blocks == info.num_total_blocks


def test_abort_ends_the_stream_and_frees_the_blocks(server, scripts):
    stream = server.stub.Generate(long_request(scripts, request_id="to-abort"), timeout=30)
    next(stream)
    assert server.stub.Abort(pb.AbortRequest(request_id="to-abort")).found
    rest = list(stream)  # ends normally, with an ABORT finish and usage
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORT and rest[-1].usage.prompt_tokens == 1
    info = wait_for_free_blocks(server.stub)
    assert (info.num_running, info.kv_cache_usage) == (0, 0.0)
    assert not server.stub.Abort(pb.AbortRequest(request_id="to-abort")).found


def test_waiting_queue_bound_gives_resource_exhausted(tiny_model_dir, scripts):
    # One running sequence at a time: the first request runs, the next two wait, the fourth is refused.
    with ServerThread(tiny_engine(tiny_model_dir, max_num_seqs=1), max_waiting=2) as s:
        first = s.stub.Generate(long_request(scripts, request_id="running"), timeout=30)
        next(first)
        waiting = [s.stub.Generate(long_request(scripts, request_id=f"w{i}"), timeout=30) for i in range(2)]
        deadline = time.monotonic() + 5
        while server_info(s.stub).num_waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            list(s.stub.Generate(long_request(scripts, request_id="refused"), timeout=30))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-waiting" in e.value.details()
        assert time.monotonic() - t0 < 1.0  # at once, not after a wait
        first.cancel()
        for f in waiting:
            f.cancel()
        assert wait_for_free_blocks(s.stub).kv_cache_usage == 0.0


def test_waiting_bound_counts_sequences_not_requests(tiny_model_dir, scripts):
    """A request of n=2 waits as two sequences: with room for two, the next request is refused (issue 25:
    one request of n=128 used to weigh as much as one of n=1)."""
    with ServerThread(tiny_engine(tiny_model_dir, max_num_seqs=1), max_waiting=2) as s:
        first = s.stub.Generate(long_request(scripts, request_id="running"), timeout=30)
        next(first)
        pair = s.stub.Generate(long_request(scripts, request_id="pair", n=2), timeout=30)
        deadline = time.monotonic() + 5
        while server_info(s.stub).num_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as e:
            list(s.stub.Generate(long_request(scripts, request_id="refused"), timeout=30))
        assert (
            e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "2 sequences waiting" in e.value.details()
        )
        first.cancel()
        pair.cancel()
        assert wait_for_free_blocks(s.stub).kv_cache_usage == 0.0


def test_abort_only_ends_the_callers_own_requests(server, scripts):
    """Another connection (a local user who learned or guessed the id) cannot abort a request; its owner
    can (issue 25: any caller could abort anyone's requests)."""
    stream = server.stub.Generate(long_request(scripts, request_id="mine"), timeout=30)
    next(stream)
    # A connection of its own (grpc would share this process's connection between channels otherwise).
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
        stranger = engine_pb2_grpc.EngineServiceStub(other)
        assert not stranger.Abort(pb.AbortRequest(request_id="mine")).found
    assert next(stream).token_ids  # still streaming
    assert server.stub.Abort(pb.AbortRequest(request_id="mine")).found
    assert list(stream)[-1].finish_reason == pb.FINISH_REASON_ABORT
    wait_for_free_blocks(server.stub)
