"""Every bad request gets INVALID_ARGUMENT with a message naming the field; the engine keeps serving."""

from __future__ import annotations

import grpc
import pytest

from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_engine

IDS = pb.TokenIds(ids=[100, 200])

# (case, request, words the message must contain)
CASES = [
    ("temperature", dict(sampling_params=pb.SamplingParams(temperature=-1.0)), "temperature"),
    ("temperature-nan", dict(sampling_params=pb.SamplingParams(temperature=float("nan"))), "temperature"),
    ("temperature-above-2", dict(sampling_params=pb.SamplingParams(temperature=2.5)), "<= 2, got 2.5"),
    ("top_p", dict(sampling_params=pb.SamplingParams(top_p=0.0)), "top_p"),
    ("top_k", dict(sampling_params=pb.SamplingParams(top_k=-2)), "top_k"),
    ("n", dict(sampling_params=pb.SamplingParams(n=0)), "'n' must"),
    ("min_p", dict(sampling_params=pb.SamplingParams(min_p=2.0)), "min_p"),
    ("presence_penalty", dict(sampling_params=pb.SamplingParams(presence_penalty=3.0)), "presence_penalty"),
    (
        "frequency_penalty",
        dict(sampling_params=pb.SamplingParams(frequency_penalty=-3.0)),
        "frequency_penalty",
    ),
    (
        "repetition_penalty",
        dict(sampling_params=pb.SamplingParams(repetition_penalty=0.0)),
        "repetition_penalty",
    ),
    ("logit_bias-id", dict(sampling_params=pb.SamplingParams(logit_bias={10**7: 1.0})), "logit_bias"),
    ("logit_bias-value", dict(sampling_params=pb.SamplingParams(logit_bias={5: 1000.0})), "logit_bias"),
    ("stop_token_ids", dict(sampling_params=pb.SamplingParams(stop_token_ids=[10**7])), "stop_token_ids"),
    ("logprobs", dict(sampling_params=pb.SamplingParams(logprobs=1000)), "logprobs"),
    ("prompt_logprobs", dict(sampling_params=pb.SamplingParams(prompt_logprobs=1000)), "prompt_logprobs"),
    # No seed is out of range: the field is int64 and the engine takes every int64 (test_sampling_spec.py).
    ("max_tokens-zero", dict(sampling_params=pb.SamplingParams(max_tokens=0)), "max_tokens"),
    ("max_tokens-too-long", dict(sampling_params=pb.SamplingParams(max_tokens=5000)), "max_tokens"),
    ("min_tokens", dict(sampling_params=pb.SamplingParams(max_tokens=2, min_tokens=5)), "min_tokens"),
    ("stop-empty", dict(sampling_params=pb.SamplingParams(stop=[""])), "empty strings"),
    ("no-prompt", dict(prompt_token_ids=None), "prompt is required"),
    ("empty-prompt", dict(prompt_token_ids=pb.TokenIds(ids=[])), "prompt must contain"),
    ("empty-text", dict(prompt_token_ids=None, text=""), "prompt must contain"),
    ("token-outside-vocab", dict(prompt_token_ids=pb.TokenIds(ids=[1, 10**6])), "prompt token id"),
    ("prompt-too-long", dict(prompt_token_ids=pb.TokenIds(ids=[7] * 3000)), "prompt has 3000 tokens"),
    ("request_id", dict(request_id="x" * 300), "request_id"),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerThread(tiny_engine(tiny_model_dir)) as s:
        yield s


@pytest.mark.parametrize("fields,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_invalid_argument(server, fields, words):
    fields = {"prompt_token_ids": IDS, **fields}
    if fields["prompt_token_ids"] is None:
        del fields["prompt_token_ids"]
    with pytest.raises(grpc.RpcError) as e:
        list(server.stub.Generate(pb.GenerateRequest(**fields), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert words in e.value.details()


def test_still_serving_after_bad_input(server):
    msgs = list(
        server.stub.Generate(
            pb.GenerateRequest(prompt_token_ids=IDS, sampling_params=pb.SamplingParams(max_tokens=3)),
            timeout=10,
        )
    )
    assert sum(len(m.token_ids) for m in msgs) == 3
    info = server.stub.GetServerInfo(pb.GetServerInfoRequest())
    assert (info.num_running, info.num_waiting) == (0, 0)


def test_text_needs_a_tokenizer(tmp_path, tiny_model_dir):
    import shutil

    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, tmp_path / f)
    with ServerThread(tiny_engine(tmp_path)) as s:
        for fields, words in [
            (dict(text="hi"), "tokenizer"),
            (dict(prompt_token_ids=IDS, sampling_params=pb.SamplingParams(stop=["x"])), "stop strings need"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                list(s.stub.Generate(pb.GenerateRequest(**fields), timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
        msgs = list(
            s.stub.Generate(
                pb.GenerateRequest(prompt_token_ids=IDS, sampling_params=pb.SamplingParams(max_tokens=2))
            )
        )
        assert [m.text for m in msgs] == [""] * len(msgs) and sum(len(m.token_ids) for m in msgs) == 2
