"""The decode-graph input path (packed staging buffer, padding rows, block tables) on CPU: the "graph" is
replaced by an eager replay of the same buffers, so what is tested is exactly what a replay would read."""

from __future__ import annotations

import random

import torch

from engine_service import LLM, SamplingParams
from engine_service.worker.cuda_graphs import DecodeGraphs, capture_sizes


class EagerReplay:
    """Stands in for a captured CUDA graph: re-runs the model on the persistent buffers into `out`."""

    def __init__(self, graphs: DecodeGraphs, bs: int):
        self.graphs, self.bs = graphs, bs
        self.out = torch.empty(bs, graphs.model.args.hidden_size)

    def replay(self) -> None:
        g, bs = self.graphs, self.bs
        self.out.copy_(g.model(g.input_ids[:bs], g.positions[:bs], g.kv_caches, g._meta(bs)))


class EagerGraphs(DecodeGraphs):
    def _capture_one(self, bs, pool):
        replay = EagerReplay(self, bs)
        return replay, replay.out


def test_capture_sizes():
    assert capture_sizes(1) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(256)[-3:] == [240, 248, 256]


def test_graph_inputs_reproduce_eager_decoding(tiny_llama):
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 256) for _ in range(n)] for n in (3, 17, 40, 5, 33)]
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (20, 6, 13, 9, 16)]
    eager = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, block_size=4)
    expected = [
        o.outputs[0].token_ids for o in eager.generate(prompt_token_ids=prompts, sampling_params=params)
    ]

    llm = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, block_size=4, max_num_seqs=8)
    runner = llm.engine.runner
    runner.graphs = EagerGraphs(runner.model, runner.kv_caches, 8, llm.engine.max_model_len, 4, runner.device)
    runner.graphs.capture()
    calls = []
    original = runner.graphs.run
    runner.graphs.run = lambda *a: calls.append(len(a[0])) or original(*a)
    got = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert got == expected
    assert set(calls) == {5, 4, 3, 2, 1}  # decode steps of every batch size went through the graph buffers
