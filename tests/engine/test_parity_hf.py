"""Greedy tokens and logprobs from LLM.generate equal Hugging Face transformers' for every architecture,
also when prefills chunk, when prompts share prefixes (cache hits), and when the cache forces preemption."""

from __future__ import annotations

import random

import pytest
import torch

from engine_service import LLM, SamplingParams

MAX_TOKENS = 12


def hf_greedy(model, prompt: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[int], list[float]]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens, strict=True)
    ]
    return tokens, logprobs


def prompts_of(lengths: list[int], seed: int = 0, vocab: int = 256) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def check(llm: LLM, model, prompts: list[list[int]]) -> list:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for prompt, out in zip(prompts, outs, strict=True):
        ref_tokens, ref_logprobs = hf_greedy(model, prompt)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        assert got.finish_reason == "length"
        ours = [lp.logprob for lp in got.logprobs]
        assert max(abs(a - b) for a, b in zip(ours, ref_logprobs, strict=True)) < 1e-4
    llm.engine.block_manager.check_integrity()
    return outs


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_batch_of_different_lengths(tiny_models, arch):
    folder, model = tiny_models[arch]
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64)
    check(llm, model, prompts_of([1, 5, 16, 17, 40, 3]))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill(tiny_models, arch):
    folder, model = tiny_models[arch]
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64, max_num_batched_tokens=7)
    check(llm, model, prompts_of([30, 9, 22], seed=1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_prefixes_hit_the_cache(tiny_models, arch):
    folder, model = tiny_models[arch]
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64, block_size=8)
    system = prompts_of([40], seed=2)[0]
    first = check(llm, model, [system + [5, 6, 7]])
    assert first[0].num_cached_tokens == 0
    outs = check(llm, model, [system + tail for tail in prompts_of([3, 9, 1], seed=3)])
    assert all(o.num_cached_tokens == 40 for o in outs)  # 5 full blocks of the shared prefix
    assert llm.engine.stats().prefix_cache_hit_rate > 0


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_preemption_under_a_tiny_cache(tiny_models, arch):
    folder, model = tiny_models[arch]
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=8, block_size=4, max_model_len=32)
    check(llm, model, prompts_of([11, 13, 9, 15], seed=4))
    assert llm.engine.scheduler.num_preemptions > 0


def test_preemption_without_prefix_caching(tiny_models):
    folder, model = tiny_models["llama"]
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        num_kv_blocks=8,
        block_size=4,
        max_model_len=32,
        enable_prefix_caching=False,
    )
    check(llm, model, prompts_of([11, 13, 9, 15], seed=5))
    assert llm.engine.scheduler.num_preemptions > 0
