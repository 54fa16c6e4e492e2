"""Prompt logprobs in the engine: equal to transformers' log-softmax at every prompt position, through chunked
prefill, a cached prefix (skipped), preemption (recomputed positions dropped) and n > 1."""

from __future__ import annotations

import pytest
import torch

from engine_service import LLM, SamplingParams
from engine_service.core.prompt_logprobs import PromptLogprobsAccumulator, PromptLogprobsChunk

PROMPT = [(i * 7 + 3) % 256 for i in range(45)]


def reference(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def check(out, model, ids, k):
    ref = reference(model, ids)
    plp = out.prompt_logprobs
    assert len(plp) == len(ids) - 1
    for p, lp in enumerate(plp):
        token = ids[p + 1]
        assert lp.token_id == token and lp.logprob == pytest.approx(ref[p, token].item(), abs=1e-4)
        assert lp.rank == int((ref[p] > ref[p, token]).sum()) + 1
        assert [t for t, _ in lp.top] == ref[p].topk(k).indices.tolist()


def test_prompt_logprobs_chunked_cached_and_n(tiny_models):
    folder, model = tiny_models["llama"]
    llm = LLM(model=str(folder), device="cpu", dtype="float32", max_num_batched_tokens=16, block_size=4)
    llm.generate(prompt_token_ids=[PROMPT[:30]], sampling_params=SamplingParams(max_tokens=1))  # cached now
    params = SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=3, n=2, ignore_eos=True)
    out = llm.generate(prompt_token_ids=[PROMPT], sampling_params=params)[0]
    check(out, model, PROMPT, 3)
    assert [o.token_ids for o in out.outputs][0] == out.outputs[1].token_ids  # greedy, both samples
    one = llm.generate(
        prompt_token_ids=[[5]], sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=0)
    )
    assert one[0].prompt_logprobs == []
    plain = llm.generate(prompt_token_ids=[PROMPT], sampling_params=SamplingParams(max_tokens=1))[0]
    assert plain.prompt_logprobs is None and plain.num_cached_tokens > 0  # others still use the cache


def test_prompt_logprobs_survive_preemption(tiny_models):
    """Too few blocks for both prompts at once: the newer is preempted and recomputed from the start."""
    folder, model = tiny_models["llama"]
    llm = LLM(model=str(folder), device="cpu", dtype="float32", max_num_batched_tokens=8, block_size=4,
              num_kv_blocks=20)  # fmt: skip
    prompts = [PROMPT[:40], PROMPT[5:45]]
    params = SamplingParams(max_tokens=12, temperature=0, prompt_logprobs=1, ignore_eos=True)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert llm.engine.scheduler.num_preemptions > 0
    for out, ids in zip(outs, prompts, strict=True):
        check(out, model, ids, 1)


def test_accumulator_drops_repeats_and_refuses_gaps():
    acc = PromptLogprobsAccumulator()

    def chunk(first, n):
        ids = list(range(first, first + n))
        return PromptLogprobsChunk(0, first, ids, [-1.0] * n, [1] * n, [[]] * n, [[]] * n)

    acc.add(["s"], [chunk(1, 3)])
    acc.add(["s"], [chunk(1, 5)])  # recomputed after a preemption: tokens 1..3 again, then 4, 5
    assert [lp.token_id for lp in acc.pop("s")] == [1, 2, 3, 4, 5]
    acc.add(["s"], [chunk(1, 2)])
    with pytest.raises(RuntimeError, match="lost"):
        acc.add(["s"], [chunk(5, 1)])
