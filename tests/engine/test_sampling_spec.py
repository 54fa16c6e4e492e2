"""The one definition of the sampling fields (SamplingParams' `spec` metadata): the proto holds the same
fields within the same bounds, unset proto fields mean what offline defaults mean, a seed is any int64 and
means the same offline and over gRPC, one definition of greedy, one max_tokens default, and the modules
the router imports pull in no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from engine_service import LLM, SamplingParams
from engine_service.core.sampling_params import SAMPLING_FIELDS
from engine_service.core.sampling_spec import INT64_MAX, INT64_MIN, SamplingError, sampler_seed
from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_engine

SEEDS = (-1, INT64_MAX, INT64_MIN, 0)
PROTO_RANGES = {
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (INT64_MIN, INT64_MAX),
}
PROTO_KINDS = {"int": set(PROTO_RANGES), "float": {FD.TYPE_FLOAT}, "bool": {FD.TYPE_BOOL}}


def test_the_modules_the_router_imports_pull_in_no_torch():
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTorch())
import engine_service.core.sampling_params, router.api.sampling, router.app, router.main
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_proto_holds_the_same_fields_within_the_same_bounds():
    proto = pb.SamplingParams.DESCRIPTOR.fields_by_name
    assert set(proto) == set(SAMPLING_FIELDS) | {"prompt_logprobs"}  # prompt_logprobs: reserved, refused
    for name, f in SAMPLING_FIELDS.items():
        d = proto[name]
        if f.kind == "logit_bias":
            assert d.message_type.fields_by_name["key"].type == FD.TYPE_UINT32
            d = d.message_type.fields_by_name["value"]
            assert d.type == FD.TYPE_FLOAT
            continue
        kind = "int" if f.kind == "token_ids" else f.kind
        if kind == "strings":
            assert d.type == FD.TYPE_STRING and d.is_repeated
            continue
        assert d.type in PROTO_KINDS[kind], name
        if kind == "int":
            lo, hi = PROTO_RANGES[d.type]
            assert lo <= f.bounds.lo and f.bounds.hi <= hi, name
        if not d.has_presence and not d.is_repeated:  # unset reads as the proto's zero: the default
            assert d.default_value == f.default, name
    assert (SAMPLING_FIELDS["seed"].bounds.lo, SAMPLING_FIELDS["seed"].bounds.hi) == PROTO_RANGES[
        FD.TYPE_INT64
    ]


def test_unset_proto_fields_mean_the_offline_defaults():
    assert SamplingParams.from_pb(pb.SamplingParams()) == SamplingParams()
    assert SamplingParams().max_tokens is None  # one default: as many as fit, offline and over gRPC


def test_every_field_crosses_the_proto_unchanged():
    params = SamplingParams(
        n=3,
        max_tokens=7,
        min_tokens=2,
        temperature=0.5,
        top_p=0.75,
        top_k=0,
        min_p=0.25,
        presence_penalty=-1.5,
        frequency_penalty=1.5,
        repetition_penalty=1.25,
        logit_bias={5: -100.0, 7: 2.5},
        seed=INT64_MIN,
        ignore_eos=True,
        stop_token_ids=[9, 3],
        stop=["x", "yz"],
        include_stop_str_in_output=True,
        skip_special_tokens=False,
        logprobs=0,
    )
    assert {f.name for f in dataclasses.fields(params)} == set(SAMPLING_FIELDS)
    assert SamplingParams.from_pb(pb.SamplingParams(**dataclasses.asdict(params))) == params


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(temperature=2.5), "'temperature' must be <= 2, got 2.5."),  # OpenAI's range, in the engine too
        (dict(seed=INT64_MAX + 1), "'seed' must be <= 9223372036854775807, got 9223372036854775808."),
        (dict(seed=INT64_MIN - 1), "'seed' must be >= -9223372036854775808, got -9223372036854775809."),
        (dict(stop="x", n=True), "'n' must be an integer, got True."),
        (dict(logit_bias={-1: 1.0}), "'logit_bias' keys must be non-negative token ids, got -1."),
    ],
)
def test_bounds_are_checked_with_the_field_named(fields, message):
    with pytest.raises(SamplingError) as info:
        SamplingParams(**fields).validate(vocab_size=100)
    assert str(info.value) == message and info.value.param == next(iter(fields.keys() - {"stop"}))


def test_a_seed_is_any_int64_mapped_onto_the_samplers_63_bits():
    for seed in SEEDS:
        SamplingParams(seed=seed).validate(vocab_size=100)
    assert [sampler_seed(s, 0) for s in SEEDS] == [INT64_MAX, INT64_MAX, 0, 0]
    assert sampler_seed(-1, 1) == 0 and sampler_seed(INT64_MAX, 2) == 1  # sample i: seed + i, mod 2^63


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, max_model_len=48)


def offline(llm, params: SamplingParams, prompt=(5, 6, 7)) -> list[int]:
    return llm.generate(prompt_token_ids=[list(prompt)], sampling_params=params)[0].outputs[0].token_ids


def test_one_greedy(llm):
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    nearly = dataclasses.replace(greedy, temperature=1e-6, seed=1)
    assert nearly.greedy and not dataclasses.replace(greedy, temperature=1e-5).greedy
    assert offline(llm, nearly) == offline(llm, greedy)


def test_seeds_and_the_max_tokens_default_mean_the_same_offline_and_over_grpc(llm, tiny_llama):
    """No max_tokens: as many as fit (48 - 3 prompt tokens), offline and over gRPC; each seed of the int64
    range draws the same tokens both ways."""
    expected = {s: offline(llm, SamplingParams(seed=s, ignore_eos=True)) for s in SEEDS}
    assert all(len(ids) == 45 for ids in expected.values())
    assert expected[-1] == expected[INT64_MAX] and expected[INT64_MIN] == expected[0]  # s and s + 2^63
    assert expected[-1] != expected[0]
    with ServerThread(tiny_engine(tiny_llama, max_model_len=48)) as server:
        for seed, ids in expected.items():
            request = pb.GenerateRequest(
                prompt_token_ids=pb.TokenIds(ids=[5, 6, 7]),
                sampling_params=pb.SamplingParams(seed=seed, ignore_eos=True),
            )
            got = [t for m in server.stub.Generate(request, timeout=60) for t in m.token_ids]
            assert got == ids, seed
