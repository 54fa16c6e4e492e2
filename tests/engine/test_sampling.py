"""Sampling: seeded reproducibility across batch mixes; filters never emit excluded tokens; penalties and
logit_bias change the distribution as defined."""

from __future__ import annotations

import torch

from engine_service import LLM, SamplingParams
from engine_service.core.sequence import Sequence
from engine_service.worker.sampler import Sampler

V = 32


def seqs_with(
    params: SamplingParams, n: int = 1, outputs: list[int] | None = None, prompt=None
) -> list[Sequence]:
    out = []
    for i in range(n):
        s = Sequence(f"r{i}#0", f"r{i}", 0, list(prompt or [1, 2, 3]), params)
        s.output_token_ids = list(outputs or [])
        out.append(s)
    return out


def sample_many(params: SamplingParams, logits: torch.Tensor, rounds: int = 200, **kw) -> list[int]:
    sampler = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
    seqs = seqs_with(params, n=rounds, **kw)
    return sampler(logits.expand(rounds, -1).clone(), seqs).token_ids


def peaked_logits() -> torch.Tensor:
    return torch.linspace(3.0, -3.0, V)[None, :]  # token 0 most likely, token V-1 least


def test_seeded_requests_repeat_whatever_the_batch(tiny_llama):
    llm = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64)
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=seeded)[0].outputs[0].token_ids
    noise = SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
    mixed = (
        llm.generate(
            prompt_token_ids=[[9, 9], [5, 6, 7], [3, 4, 5, 6, 7, 8]], sampling_params=[noise, seeded, noise]
        )[1]
        .outputs[0]
        .token_ids
    )
    assert alone == mixed
    other_seed = SamplingParams(max_tokens=10, temperature=1.0, seed=99, ignore_eos=True)
    assert (
        llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=other_seed)[0].outputs[0].token_ids
        != alone
    )


def test_n_samples_share_the_prompt_blocks_and_differ(tiny_llama):
    llm = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, block_size=4)
    prompt = list(range(3, 40))
    out = llm.generate(
        prompt_token_ids=[prompt],
        sampling_params=SamplingParams(n=4, max_tokens=8, temperature=1.0, seed=7, ignore_eos=True),
    )[0]
    assert len(out.outputs) == 4 and [o.index for o in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    # Samples 1..3 found sample 0's full prompt blocks: 36 of 37 prompt tokens each.
    bm = llm.engine.block_manager
    assert bm.num_hit_tokens == 3 * 36


def test_top_k_never_emits_excluded_tokens():
    tokens = sample_many(SamplingParams(temperature=1.0, top_k=3), peaked_logits())
    assert set(tokens) <= {0, 1, 2} and len(set(tokens)) > 1


def test_top_p_never_emits_excluded_tokens():
    logits = torch.full((1, V), -10.0)
    logits[0, :4] = torch.tensor([2.0, 1.5, 1.0, 0.5])
    probs = torch.softmax(logits, -1)[0]
    # the smallest set with mass >= 0.8 is the first three tokens
    assert probs[:2].sum() < 0.8 <= probs[:3].sum()
    tokens = sample_many(SamplingParams(temperature=1.0, top_p=0.8), logits)
    assert set(tokens) <= {0, 1, 2} and 2 in tokens


def test_min_p_never_emits_excluded_tokens():
    logits = peaked_logits()
    probs = torch.softmax(logits, -1)[0]
    allowed = {i for i in range(V) if probs[i] >= 0.2 * probs[0]}
    tokens = sample_many(SamplingParams(temperature=1.0, min_p=0.2), logits)
    assert set(tokens) <= allowed and len(set(tokens)) > 1


def test_greedy_takes_the_argmax():
    assert set(sample_many(SamplingParams(temperature=0.0), peaked_logits(), rounds=5)) == {0}


def test_logit_bias_moves_the_argmax():
    assert set(
        sample_many(SamplingParams(temperature=0.0, logit_bias={7: 100.0}), peaked_logits(), rounds=3)
    ) == {7}
    tokens = sample_many(SamplingParams(temperature=1.0, logit_bias={0: -100.0}), peaked_logits())
    assert 0 not in tokens


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.full((1, V), -5.0)
    logits[0, 0] = 10.0  # EOS (id 0) dominates
    logits[0, 5] = 9.0  # a stop token id
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[5])
    assert set(sample_many(params, logits, rounds=3)) - {0, 5} == set(sample_many(params, logits, rounds=3))
    # once min_tokens outputs exist, EOS is allowed again
    assert set(sample_many(params, logits, rounds=3, outputs=[9, 9])) == {0}


def test_frequency_and_presence_penalties_are_as_defined():
    sampler = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
    base = torch.zeros(1, V)
    seq = seqs_with(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), outputs=[4, 4, 4, 9])[0]
    got = sampler._process(base.clone(), [seq])[0]
    assert got[4].item() == -(0.5 * 3 + 0.25)
    assert got[9].item() == -(0.5 * 1 + 0.25)
    assert got[1].item() == 0.0  # a prompt token: OpenAI penalties count generated tokens only


def test_repetition_penalty_is_as_defined():
    sampler = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
    logits = torch.full((1, V), 2.0)
    logits[0, 3] = -2.0
    seq = seqs_with(SamplingParams(repetition_penalty=2.0), prompt=[1, 3], outputs=[5])[0]
    got = sampler._process(logits.clone(), [seq])[0]
    assert got[1].item() == 1.0 and got[5].item() == 1.0  # positive logits divided
    assert got[3].item() == -4.0  # negative logits multiplied
    assert got[2].item() == 2.0  # untouched


def test_penalties_shift_the_sampled_distribution():
    logits = torch.zeros(1, V)
    logits[0, 4] = 1.0
    plain = sample_many(SamplingParams(temperature=1.0), logits, rounds=400, outputs=[4])
    penalized = sample_many(
        SamplingParams(temperature=1.0, frequency_penalty=2.0), logits, rounds=400, outputs=[4]
    )
    assert penalized.count(4) < plain.count(4) / 2


def test_logprobs_return_top_n_best_first():
    sampler = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
    seq = seqs_with(SamplingParams(temperature=0.0, logprobs=3))[0]
    result = sampler(peaked_logits().clone(), [seq])
    lp = result.logprobs[0]
    ref = torch.log_softmax(peaked_logits()[0], -1)
    assert lp.token_id == 0 and abs(lp.logprob - ref[0].item()) < 1e-6
    assert [t for t, _ in lp.top] == [0, 1, 2]


def test_batch_rows_kept_only_while_the_batch_is_the_same():
    """One sampler drawing for one batch after another (a new order, a new member, a list the caller changed
    in place) draws each as a fresh sampler would. (The model runner keeps a batch's sampling rows while the
    scheduler says the batch is the same: tests/engine/test_input_batch.py.)"""
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, seed=2, top_k=3, min_tokens=2),
    ]
    a, b, c = (Sequence(f"r{i}#0", f"r{i}", 0, [1, 2, 3], p) for i, p in enumerate(params))
    kept = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
    batch = [a, b]
    for seqs, positions in [
        (batch, [0, 0]),
        (batch, [1, 1]),
        ([b, a], [2, 2]),
        ([a, b, c], [3, 3, 0]),
        ([a, b, c], [4, 4, 5]),
    ]:
        fresh = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)
        expected = fresh(logits[: len(seqs)].clone(), seqs, positions).token_ids
        assert kept(logits[: len(seqs)].clone(), seqs, positions).token_ids == expected
    batch[1] = c  # the same list object, changed in place
    expected = Sampler(torch.device("cpu"), eos_token_ids=(0,), seed=0)(logits[:2].clone(), batch, [6, 1])
    assert kept(logits[:2].clone(), batch, [6, 1]).token_ids == expected.token_ids
