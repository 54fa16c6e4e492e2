"""The engine service on a GPU: streams complete with the offline engine's tokens, and streaming through
gRPC keeps >= 95 % of the offline throughput (llama-1b, 256 streams). Run with `make test-gpu`."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def tiny_shape(tmp_path_factory):
    from pagoda.bench import shapes

    return shapes.write_model_dir("tiny", tmp_path_factory.mktemp("tiny-shape"))


@pytest.mark.parametrize("core", ["process", "thread"])
def test_streams_on_gpu_match_offline(tiny_shape, core):
    from engine_service import LLM, SamplingParams
    from engine_service.core.config import EngineConfig
    from engine_service.engine.engine import Engine
    from pagoda.engine.v1 import engine_pb2 as pb
    from tests.engine_service.server_thread import ServerThread

    config = EngineConfig(
        model=str(tiny_shape),
        device="cuda",
        dtype="float32",
        load_format="dummy",
        num_kv_blocks=512,
        max_num_seqs=64,
    )
    prompts = [[(7 * i + 13 * j) % 500 + 3 for j in range(5 + i)] for i in range(48)]
    offline = LLM(str(tiny_shape), device="cuda", dtype="float32", load_format="dummy", num_kv_blocks=512)
    expected = offline.generate(
        prompt_token_ids=prompts[:1],
        sampling_params=SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
    )
    del offline
    target = config if core == "process" else Engine(config)
    with ServerThread(target, engine_core=core) as s:

        def run(ids):
            req = pb.GenerateRequest(
                prompt_token_ids=pb.TokenIds(ids=ids),
                sampling_params=pb.SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
            )
            return [t for m in s.stub.Generate(req, timeout=120) for t in m.token_ids]

        assert run(prompts[0]) == expected[0].outputs[0].token_ids
        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            outs = list(pool.map(run, prompts))
        assert all(len(o) == 20 for o in outs)
        info = s.stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.device == "cuda"


def test_grpc_keeps_95_percent_of_offline_throughput(tmp_path):
    from pagoda.bench import grpc_throughput

    argv = [
        "--shape",
        "llama-1b",
        "--num-prompts",
        "1000",
        "--concurrency",
        "256",
        "--engine-core",
        "process",
        "--results-dir",
        str(tmp_path),
        "--model-dir",
        str(tmp_path / "llama-1b"),
    ]
    assert grpc_throughput.main(argv) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    print(json.dumps({k: record[k] for k in ("out_tok_s", "offline_out_tok_s", "ratio")}))
    assert record["ratio"] >= 0.95, record
