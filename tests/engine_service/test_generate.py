"""Generate over real gRPC on the scripted tiny Llama: streaming, text, stop strings, n, logprobs, info."""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.scripted_model import EOS, SCRIPTS
from tests.engine_service.server_thread import ServerThread, tiny_engine


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerThread(tiny_engine(tiny_model_dir)) as s:
        yield s


def request(ids=None, text=None, request_id="", **params) -> pb.GenerateRequest:
    sp = pb.SamplingParams(**{"temperature": 0.0, **params})
    if text is not None:
        return pb.GenerateRequest(request_id=request_id, text=text, sampling_params=sp)
    return pb.GenerateRequest(
        request_id=request_id, prompt_token_ids=pb.TokenIds(ids=ids), sampling_params=sp
    )


def run(stub, req) -> list[pb.GenerateResponse]:
    return list(stub.Generate(req, timeout=30))


def test_streams_the_script_with_multibyte_text_intact(server, scripts):
    ids = scripts["emoji"]
    msgs = run(server.stub, request(ids[:1], max_tokens=64))
    assert all("\ufffd" not in m.text for m in msgs)  # no half characters, ever
    assert "".join(m.text for m in msgs) == SCRIPTS["emoji"][0][len("Hi") :]
    assert [t for m in msgs for t in m.token_ids] == ids[1:] + [EOS]
    last = msgs[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.stop_reason == str(EOS)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1, len(ids))
    assert all(not m.HasField("usage") for m in msgs[:-1])


def test_text_prompt_is_tokenized_by_the_engine(server):
    msgs = run(server.stub, request(text=" red", max_tokens=5))
    assert "".join(m.text for m in msgs) == " green blue red green blue"
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


def test_stop_string_across_tokens(server, scripts, tokenizer):
    msgs = run(server.stub, request(scripts["stop"][:1], stop=["ty-tw"], max_tokens=64))
    assert "".join(m.text for m in msgs) == " answer is for"
    assert (msgs[-1].finish_reason, msgs[-1].stop_reason) == (pb.FINISH_REASON_STOP, "ty-tw")
    assert tokenizer.decode([t for m in msgs for t in m.token_ids]) == " answer is forty-two"


def test_include_stop_str_in_output(server, scripts):
    msgs = run(server.stub, request(scripts["stop"][:1], stop=["ty-tw"], include_stop_str_in_output=True))
    assert "".join(m.text for m in msgs) == " answer is forty-tw"


def test_concurrent_streams(server, scripts):
    loop = scripts["loop"]
    reqs = [request(loop[:1], max_tokens=10 + i, request_id=f"c{i}") for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda r: run(server.stub, r), reqs))
    for i, msgs in enumerate(results):
        tokens = [t for m in msgs for t in m.token_ids]
        assert len(tokens) == 10 + i
        assert tokens[:3] == loop[1:] + loop[:1]
        assert msgs[-1].usage.completion_tokens == 10 + i


def test_n_samples_each_finish_and_usage_comes_last(server, scripts):
    msgs = run(server.stub, request(scripts["loop"][:1], n=3, max_tokens=4, temperature=1.0, seed=7))
    finished = [m.index for m in msgs if m.finish_reason]
    assert sorted(finished) == [0, 1, 2]
    assert msgs[-1].usage.completion_tokens == 12 and msgs[-1].finish_reason
    for index in range(3):
        assert sum(len(m.token_ids) for m in msgs if m.index == index) == 4


def test_logprobs_with_token_texts(server, scripts):
    msgs = run(server.stub, request(scripts["loop"][:1], max_tokens=3, logprobs=2))
    positions = [lp for m in msgs for lp in m.logprobs]
    assert [p.sampled.token for p in positions] == [" green", " blue", " red"]
    for p in positions:
        assert len(p.top) == 2 and p.top[0].token_id == p.sampled.token_id
        assert p.sampled.logprob == pytest.approx(0.0, abs=1e-6)  # the script token has all the mass


def test_model_and_server_info(server, tokenizer):
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.architecture, info.vocab_size, info.block_size) == ("LlamaForCausalLM", len(tokenizer), 16)
    assert list(info.eos_token_ids) == [EOS] and info.device == "cpu" and info.dtype == "float32"
    assert (info.num_kv_blocks, info.tensor_parallel_size, info.max_model_len) == (64, 1, 2048)
    assert info.served_model_name
    load = server.stub.GetServerInfo(pb.GetServerInfoRequest())
    assert load.num_total_blocks == 64 and not load.draining
    assert 0.0 <= load.prefix_cache_hit_rate <= 1.0


def test_watch_server_info(server):
    stream = server.stub.WatchServerInfo(pb.WatchServerInfoRequest(interval_ms=50), timeout=10)
    first, second = next(stream), next(stream)
    stream.cancel()
    assert first.num_total_blocks == second.num_total_blocks == 64


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"pagoda.engine.v1.EngineService", "grpc.health.v1.Health"} <= names


def test_unknown_abort_is_not_found(server):
    assert not server.stub.Abort(pb.AbortRequest(request_id="nobody")).found


def test_duplicate_live_request_id_is_invalid(server, scripts):
    stream = server.stub.Generate(request(scripts["loop"][:1], request_id="dup", max_tokens=1000), timeout=30)
    next(stream)
    with pytest.raises(grpc.RpcError) as e:
        run(server.stub, request(scripts["loop"][:1], request_id="dup"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in e.value.details()
    stream.cancel()
