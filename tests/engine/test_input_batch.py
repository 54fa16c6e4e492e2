"""The persistent batch keeps its layout (rows, the sampling rows on the device, the placeholder gather)
while the scheduler says the batch is the same: every option of SamplingParams, sync and async, through
preemption, joins and finishes, gives exactly the tokens of a run that lays every step out afresh."""

from __future__ import annotations

import random

import pytest

from engine_service import LLM, SamplingParams
from engine_service.core.scheduler import Scheduler

PARAMS = [
    SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
    SamplingParams(max_tokens=9, temperature=1.0, seed=3, top_k=20, top_p=0.9, logprobs=2, ignore_eos=True),
    SamplingParams(n=2, max_tokens=10, temperature=0.8, seed=11, min_p=0.05, min_tokens=4),
    SamplingParams(max_tokens=14, temperature=1.0, seed=5, logit_bias={7: 3.0}, stop_token_ids=[9, 10]),
    SamplingParams(max_tokens=8, temperature=0.7, seed=1, presence_penalty=0.5, repetition_penalty=1.2),
]


def generate(folder, async_scheduling: bool, params: list[SamplingParams], fresh_layout: bool, monkeypatch):
    same = []
    report = Scheduler._report_changes

    def spy(self, out, admitted):
        report(self, out, admitted)
        if fresh_layout:
            out.same_batch = False
        same.append(out.same_batch)

    monkeypatch.setattr(Scheduler, "_report_changes", spy)
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        async_scheduling=async_scheduling,
        num_kv_blocks=14,
        block_size=4,
        max_num_seqs=5,
        max_num_batched_tokens=24,
    )
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 256) for _ in range(rng.randrange(2, 19))] for _ in params]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    tokens = [[(o.token_ids, o.finish_reason, o.logprobs) for o in r.outputs] for r in outs]
    return tokens, llm.engine.scheduler.num_preemptions, sum(same)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_kept_layout_equals_a_fresh_one_every_step(tiny_llama, async_scheduling, monkeypatch):
    params = PARAMS * 2
    if async_scheduling:  # penalties turn the overlap off: keep them in the sync run only
        params = [p for p in params if not p.has_penalties]
    kept, preemptions, num_same = generate(tiny_llama, async_scheduling, params, False, monkeypatch)
    fresh, _, _ = generate(tiny_llama, async_scheduling, params, True, monkeypatch)
    assert kept == fresh
    assert preemptions > 0 and num_same > 5  # both paths were taken
