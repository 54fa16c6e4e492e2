"""Async scheduling (step n+1 scheduled while step n runs) gives exactly the tokens of the synchronous
loop: placeholders are resolved, stops are honoured one step late without leaking tokens, and blocks are
freed. On CPU the forward pass is synchronous, but the pipeline's bookkeeping is the same as on a GPU."""

from __future__ import annotations

import random

import pytest

from engine_service import LLM, SamplingParams
from engine_service.worker.cuda_graphs import DecodeGraphs


def prompts_of(lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 256) for _ in range(n)] for n in lengths]


def run(folder, async_scheduling, prompts, params, **kw):
    llm = LLM(str(folder), device="cpu", dtype="float32", async_scheduling=async_scheduling, **kw)
    assert llm.engine.async_scheduling is async_scheduling
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    llm.engine.block_manager.check_integrity()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
    return [[(o.token_ids, o.finish_reason, o.stop_reason) for o in r.outputs] for r in outs], llm


CASES = {
    "greedy": dict(params=SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True), kw={}),
    "chunked": dict(
        params=SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
        kw=dict(max_num_batched_tokens=7),
    ),
    "preempting": dict(
        params=SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
        kw=dict(num_kv_blocks=8, block_size=4, max_model_len=32),
    ),
    "seeded-n": dict(
        params=SamplingParams(n=3, max_tokens=10, temperature=1.0, seed=5, ignore_eos=True), kw={}
    ),
    "stop-ids": dict(
        params=SamplingParams(max_tokens=30, temperature=1.0, seed=1, stop_token_ids=list(range(3, 256, 9))),
        kw={},
    ),
    "penalties": dict(
        params=SamplingParams(
            max_tokens=10, temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.5, ignore_eos=True
        ),
        kw={},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_async_equals_sync(tiny_llama, case):
    params, kw = CASES[case]["params"], CASES[case]["kw"]
    kw = {"num_kv_blocks": 64, **kw}
    prompts = prompts_of([5, 17, 11, 2, 9] if case == "preempting" else [5, 17, 30, 2, 11], seed=len(case))
    sync, _ = run(tiny_llama, False, prompts, params, **kw)
    async_, llm = run(tiny_llama, True, prompts, params, **kw)
    assert async_ == sync
    if case == "preempting":
        assert llm.engine.scheduler.num_preemptions > 0
    if case == "stop-ids":
        assert any(o[1] == "stop" for r in sync for o in r)  # the stop ids really stop some samples


def test_abort_while_a_step_is_in_flight(tiny_llama):
    llm = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, async_scheduling=True)
    engine = llm.engine
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    engine.add_request("a", [5, 6, 7], params)
    engine.add_request("b", [8, 9], params)
    seen = {"a": 0, "b": 0}
    for _ in range(6):
        for u in engine.step():
            seen[u.request_id] += len(u.new_token_ids)
    assert engine._inflight is not None
    engine.abort("a")  # its in-flight token must not come out
    after_abort = seen["a"]
    while engine.has_unfinished():
        for u in engine.step():
            seen[u.request_id] += len(u.new_token_ids)
    assert seen["a"] == after_abort and seen["b"] == 50
    engine.block_manager.check_integrity()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


class _EagerReplay:
    def __init__(self, graphs, bs):
        self.graphs, self.bs = graphs, bs
        self.out = None

    def replay(self):
        g, bs = self.graphs, self.bs
        self.out.copy_(g.model(g.input_ids[:bs], g.positions[:bs], g.kv_caches, g._meta(bs)))


class _EagerGraphs(DecodeGraphs):
    def _capture_one(self, bs, pool):
        import torch

        replay = _EagerReplay(self, bs)
        replay.out = torch.empty(bs, self.model.args.hidden_size)
        return replay, replay.out


def test_async_through_the_decode_graph_inputs(tiny_llama):
    """Placeholders are patched into the graph's input buffer on the device before the replay."""
    prompts = prompts_of([3, 17, 40, 5], seed=9)
    params = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)
    sync, _ = run(tiny_llama, False, prompts, params, num_kv_blocks=64, block_size=4)
    llm = LLM(
        str(tiny_llama),
        device="cpu",
        dtype="float32",
        num_kv_blocks=64,
        block_size=4,
        max_num_seqs=8,
        async_scheduling=True,
    )
    runner = llm.engine.runner
    runner.graphs = _EagerGraphs(
        runner.model, runner.kv_caches, 8, llm.engine.max_model_len, 4, runner.device
    )
    runner.graphs.capture()
    fixed = []
    original = runner.graphs.run
    runner.graphs.run = lambda *a: fixed.append(a[-1] is not None) or original(*a)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [[(o.token_ids, o.finish_reason, o.stop_reason) for o in r.outputs] for r in outs] == sync
    assert fixed and all(fixed)  # every decode step fed placeholders from the step before


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_steady_updates_equal_the_row_by_row_ones(tiny_llama, async_scheduling):
    """A batch that decodes unchanged copies its update columns (Engine._steady): the updates of every step,
    through stops, an abort, a late joiner and logprobs, are those the row-by-row build gives."""

    def steps(keep_steady: bool):
        llm = LLM(str(tiny_llama), device="cpu", dtype="float32", async_scheduling=async_scheduling)
        engine = llm.engine
        greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        stopping = SamplingParams(
            max_tokens=30, temperature=1.0, seed=3, stop_token_ids=list(range(3, 256, 5))
        )
        for i, prompt in enumerate(prompts_of([5, 9, 3, 7], seed=11)):
            engine.add_request(f"r{i}", prompt, stopping if i == 1 else greedy)
        history = []
        for n in range(50):
            if n == 5:
                engine.abort("r2")
            if n == 8:
                engine.add_request(
                    "late", [4, 5, 6], SamplingParams(max_tokens=6, temperature=0.0, logprobs=2)
                )
            if not keep_steady:
                engine._steady = None
            history.append([(u.request_id, u.new_token_ids, u.finish_reason) for u in engine.step()])
        assert not engine.has_unfinished()
        return history

    assert steps(keep_steady=True) == steps(keep_steady=False)
