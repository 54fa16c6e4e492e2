"""The scheduler with no model at all: token budget, chunking, preemption, stops."""

from __future__ import annotations

import random

import pytest

from engine_service.core.block_manager import BlockManager, block_key
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler
from engine_service.core.sequence import Sequence, SequenceStatus

EOS = 0


def make(num_blocks=16, block_size=4, max_num_seqs=8, budget=32, max_model_len=64, caching=True) -> Scheduler:
    bm = BlockManager(num_blocks, block_size, caching)
    return Scheduler(bm, max_num_seqs, budget, max_model_len, eos_token_ids=[EOS])


def seq(name: str, n_prompt: int, max_tokens: int = 8, start: int = 1, **kw) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, **kw)
    return Sequence(f"{name}#0", name, 0, list(range(start, start + n_prompt)), params)


def run_step(s: Scheduler, token: int = 7):
    out = s.schedule()
    sampling = [x.seq for x in out.scheduled if x.samples]
    finished = s.update_from_output(sampling, [token] * len(sampling))
    return out, finished


def test_budget_is_shared_and_prefill_chunks():
    s = make(budget=10)
    a, b = seq("a", 6), seq("b", 9, start=100)
    s.add(a)
    s.add(b)
    out, _ = run_step(s)
    assert [(x.seq.request_id, x.num_new_tokens, x.samples) for x in out.scheduled] == [
        ("a", 6, True),
        ("b", 4, False),
    ]
    out, _ = run_step(s)
    # a decodes one token; b continues its prompt with the rest of the budget (5 tokens: all it has left).
    assert [(x.seq.request_id, x.num_new_tokens, x.samples) for x in out.scheduled] == [
        ("a", 1, True),
        ("b", 5, True),
    ]
    assert a.num_output_tokens == 2 and b.num_output_tokens == 1
    s.block_manager.check_integrity()


def test_decode_step_has_one_token_per_running_sequence():
    s = make()
    for i in range(3):
        s.add(seq(f"r{i}", 5, start=10 * i + 1))
    run_step(s)
    out, _ = run_step(s)
    assert [x.num_new_tokens for x in out.scheduled] == [1, 1, 1]
    assert all(x.samples for x in out.scheduled)


def test_max_num_seqs_caps_the_batch():
    s = make(max_num_seqs=2)
    for i in range(3):
        s.add(seq(f"r{i}", 3, start=10 * i + 1))
    out, _ = run_step(s)
    assert len(out.scheduled) == 2 and len(s.waiting) == 1


def test_preempts_newest_when_blocks_run_out_and_recovers():
    s = make(num_blocks=4, block_size=4, budget=64, max_model_len=16)
    a, b = seq("a", 8, max_tokens=6), seq("b", 8, max_tokens=6, start=50)
    s.add(a)
    s.add(b)
    run_step(s)  # a: 2 full blocks, b: 2 full blocks -> the pool is full
    assert s.block_manager.num_free_blocks == 0
    out, _ = run_step(s)  # both need a third block: b (newest) is preempted so a can grow
    assert out.preempted == [b] and b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0
    assert [x.seq for x in out.scheduled] == [a]
    assert s.num_preemptions == 1
    steps = 0
    while s.num_unfinished and steps < 100:
        run_step(s)
        s.block_manager.check_integrity()
        steps += 1
    assert a.finish_reason == "length" and b.finish_reason == "length"
    assert a.num_output_tokens == 6 and b.num_output_tokens == 6
    assert s.block_manager.num_free_blocks == 4


def test_eos_stops_unless_ignored_and_min_tokens():
    s = make()
    a = seq("a", 3, max_tokens=5)
    b = seq("b", 3, max_tokens=5, start=20, ignore_eos=True)
    c = seq("c", 3, max_tokens=5, start=40, min_tokens=2)
    for x in (a, b, c):
        s.add(x)
    _, finished = run_step(s, token=EOS)
    assert finished == [a] and a.finish_reason == "stop" and a.stop_reason == EOS
    run_step(s, token=EOS)
    _, finished = run_step(s, token=EOS)
    assert c in finished and c.num_output_tokens == 3  # EOS accepted only once min_tokens (2) were generated
    assert b.status is SequenceStatus.RUNNING


def test_stop_token_ids_and_max_model_len():
    s = make(max_model_len=8)
    a = seq("a", 3, max_tokens=4, stop_token_ids=[7])
    b = seq("b", 6, max_tokens=None, start=30)
    s.add(a)
    s.add(b)
    _, finished = run_step(s, token=7)
    assert a in finished and a.finish_reason == "stop" and a.stop_reason == 7
    run_step(s, token=5)
    assert b.finish_reason == "length" and b.num_tokens == 8


def test_abort_frees_blocks_at_once():
    s = make()
    a = seq("a", 9)
    s.add(a)
    run_step(s)
    assert s.block_manager.num_free_blocks < 16
    s.abort([a])
    assert a.finish_reason == "abort" and s.num_unfinished == 0
    assert s.block_manager.num_free_blocks == 16
    s.block_manager.check_integrity()


def test_waiting_request_reuses_prefix_and_counts_hits():
    s = make(block_size=4)
    a = seq("a", 12)
    s.add(a)
    run_step(s)
    b = seq("b", 12)  # same prompt
    s.add(b)
    out, _ = run_step(s)
    item = next(x for x in out.scheduled if x.seq is b)
    assert item.start == 8 and item.num_new_tokens == 4  # two blocks hit; the last block is recomputed
    assert b.num_cached_tokens == 8
    assert s.block_manager.num_hit_tokens == 8 and s.block_manager.num_query_tokens == 24


def test_many_requests_never_deadlock_under_pressure():
    s = make(num_blocks=6, block_size=4, budget=8, max_num_seqs=4, max_model_len=24)
    seqs = [seq(f"r{i}", 5 + i % 4, max_tokens=8, start=i * 13) for i in range(10)]
    for x in seqs:
        s.add(x)
    steps = 0
    while s.num_unfinished:
        run_step(s)
        s.block_manager.check_integrity()
        steps += 1
        assert steps < 1000, "scheduler made no progress"
    assert all(x.num_output_tokens == 8 for x in seqs)
    assert s.num_preemptions > 0


def _check_block_state(s: Scheduler) -> None:
    """What the scheduler's decode fast path relies on (BlockManager.allocate): every running sequence's
    table covers exactly its computed tokens, and its keys are those of its full blocks of computed and
    resolved tokens, each the key of that block's token ids."""
    bm, bs = s.block_manager, s.block_manager.block_size
    for x in s.running:
        assert len(bm.block_table(x)) == -(-x.num_computed_tokens // bs)
        resolved = x.num_tokens - x.num_pending
        keys = bm._keys.get(x.seq_id, [])
        assert len(keys) == min(x.num_computed_tokens, resolved) // bs
        parent = None
        for i, key in enumerate(keys):
            parent = block_key(parent, x.token_ids_slice(i * bs, (i + 1) * bs), x.cache_salt)
            assert key == parent


@pytest.mark.parametrize("lag", [0, 1])
@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_prefix_keys_stay_exact_through_decode_preemption_and_lag(lag, block_size):
    """Random prompts sharing prefixes, under block pressure, with update_from_output run at once (sync) or
    one step late (async scheduling): the skipped allocations never miss a block or a key."""
    rng = random.Random(block_size * 10 + lag)
    s = make(
        num_blocks=64 // block_size + 4, block_size=block_size, budget=16, max_num_seqs=6, max_model_len=40
    )
    seqs = []
    for i in range(14):
        prompt = [1, 2, 3, 4, 5, 6][: rng.randint(0, 6)] + [
            rng.randrange(1, 50) for _ in range(rng.randint(1, 9))
        ]
        x = Sequence(f"r{i}#0", f"r{i}", 0, prompt, SamplingParams(max_tokens=rng.randint(1, 20)))
        seqs.append(x)
        s.add(x)
    in_flight = None  # as the Engine runs it: schedule step n + 1, then resolve step n
    steps = 0
    while s.num_unfinished or in_flight:
        launched = s.schedule()
        _check_block_state(s)
        prompt_tokens = [
            min(x.start + x.num_new_tokens, x.seq.num_prompt_tokens) - x.start for x in launched.scheduled
        ]
        assert launched.num_prompt_tokens == sum(n for n in prompt_tokens if n > 0)
        if lag == 0 and not launched.is_empty:
            in_flight, launched = launched, None
        if in_flight is not None:
            sampling = [x.seq for x in in_flight.scheduled if x.samples]
            s.update_from_output(sampling, [rng.randrange(1, 50) for _ in sampling])
            _check_block_state(s)
            s.block_manager.check_integrity()
        in_flight = None if launched is None or launched.is_empty else launched
        steps += 1
        assert steps < 2000, "scheduler made no progress"
    assert all(x.finish_reason == "length" and x.num_output_tokens == x.params.max_tokens for x in seqs)
    assert s.num_preemptions > 0 and s.block_manager.num_hit_tokens > 0  # both paths were taken
