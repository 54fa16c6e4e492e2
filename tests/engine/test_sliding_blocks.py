"""A hybrid model's sliding-window KV group (core/sliding_blocks.py) with exact block ids: out-of-window
blocks go back to the pool as decode advances while the global group keeps every block, per-group free
counts, prefix hits bounded by what the sliding group still holds, preemption and finish free both."""

from __future__ import annotations

import pytest

from engine_service.core.block_manager import BlockManager
from engine_service.core.kv_cache_groups import kv_cache_groups, sliding_demand, split_blocks
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler
from engine_service.core.sequence import Sequence
from engine_service.core.sliding_blocks import SlidingBlocks

S, F = "sliding_attention", "full_attention"


def make_bm(num_full: int, num_sliding: int, window: int, block_size: int = 4) -> BlockManager:
    return BlockManager(num_full, block_size, sliding=SlidingBlocks(num_sliding, block_size, window))


def make_scheduler(bm: BlockManager, budget: int = 64, max_num_seqs: int = 8) -> Scheduler:
    return Scheduler(bm, max_num_seqs, budget, max_model_len=256, eos_token_ids=[0])


def seq(name: str, tokens: list[int], max_tokens: int = 8) -> Sequence:
    return Sequence(f"{name}#0", name, 0, tokens, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def admit(bm: BlockManager, s: Sequence) -> list[int]:
    """Admit `s` whole in one allocation (the block manager alone, no scheduler)."""
    hits = bm.get_computed_blocks(s)
    num_new = s.num_tokens - len(hits) * bm.block_size
    assert bm.can_allocate(s, num_new, hits)
    bm.allocate(s, num_new, hits)
    s.num_computed_tokens += num_new
    return hits


def step(sched: Scheduler, token: int = 7):
    out = sched.schedule()
    sampling = [x.seq for x in out.scheduled if x.samples]
    sched.update_from_output(sampling, [token] * len(sampling))
    return out


# ---- groups and sizing ------------------------------------------------------------------------------
def test_groups_only_for_a_model_that_mixes_kinds():
    groups = kv_cache_groups((S, S, F, S), 8, True)
    assert groups.sliding_layers == (0, 1, 3) and groups.full_layers == (2,)
    assert groups.sliding_window == 8 and groups.num_layers == 4
    assert kv_cache_groups((S, S), 8, True) is None  # every layer windowed (Phi-3 style): one group
    assert kv_cache_groups((F, F), None, True) is None
    assert kv_cache_groups((S, F), 8, False) is None  # a model that does not honour the window
    assert kv_cache_groups(None, 8, True) is None


def test_split_gives_the_sliding_group_its_demand_and_the_rest_to_the_global_group():
    groups = kv_cache_groups((S, S, F, S), 8, True)
    # window 8, blocks of 4: 4 blocks per sequence at most, + the step's 16 tokens: 4 blocks
    assert sliding_demand(8, 4, max_num_seqs=2, max_num_batched_tokens=16) == 4 + 2 * 4
    # 400 single-layer blocks: an even split is 100 each; the sliding group needs 12 (x 3 layers)
    assert split_blocks(400, groups, demand=12) == (400 - 36, 12)
    assert split_blocks(400, groups, demand=100) == (100, 100)  # no saving to make: the even split
    assert split_blocks(400, groups, demand=500) == (100, 100)


# ---- the sliding group alone --------------------------------------------------------------------
def test_decode_frees_out_of_window_blocks_while_the_global_group_keeps_them():
    bm = make_bm(num_full=32, num_sliding=8, window=8)
    sched = make_scheduler(bm)
    a = seq("a", list(range(1, 11)), max_tokens=20)  # 10 prompt tokens: 3 blocks
    sched.add(a)
    null = bm.sliding.null_block
    assert null == 8
    tables = {}  # the step's first position -> both tables as the step runs them
    while sched.num_unfinished:
        out = sched.schedule()
        tables[out.num_computed_tokens[0]] = (list(bm.block_table(a)), list(bm.sliding.block_table(a.seq_id)))
        bm.check_integrity()
        sched.update_from_output([a], [7])
    assert tables[0] == ([0, 1, 2], [0, 1, 2])
    # position 11 (a query that sees 4..11): block 0 (positions 0..3) leaves the window
    assert tables[11] == ([0, 1, 2], [null, 1, 2])
    assert tables[12] == ([0, 1, 2, 3], [null, 1, 2, 3])
    assert tables[15] == ([0, 1, 2, 3], [null, null, 2, 3])
    assert tables[16] == ([0, 1, 2, 3, 4], [null, null, 2, 3, 4])
    assert tables[19] == ([0, 1, 2, 3, 4], [null, null, null, 3, 4])
    # the sliding pool reuses what the window left (LRU: 3..7, then the released 0, 1, 2 in order)
    assert tables[24][1] == [null, null, null, null, 4, 5, 6]
    assert tables[28] == ([0, 1, 2, 3, 4, 5, 6, 7], [null] * 5 + [5, 6, 7])
    assert max(tables) == 28
    assert a.is_finished  # 10 + 20 tokens; finishing frees both groups
    assert bm.num_free_blocks == 32 and bm.sliding.num_free_blocks == 8
    bm.check_all_free()


def test_per_group_free_counts_and_changes_reported_to_the_runner():
    bm = make_bm(num_full=32, num_sliding=8, window=8)
    sched = make_scheduler(bm)
    a = seq("a", list(range(1, 11)), max_tokens=20)
    sched.add(a)
    null = bm.sliding.null_block
    out = step(sched)  # the prompt: 3 blocks in each group
    assert out.new_seqs[0].block_ids == [0, 1, 2]
    assert out.sliding_block_changes == {a.seq_id: (0, [0, 1, 2])}
    assert (bm.num_free_blocks, bm.sliding.num_free_blocks) == (29, 5)
    out = step(sched)  # position 10: inside its block, nothing to allocate or release
    assert out.sliding_block_changes == {}
    out = step(sched)  # position 11: block 0 leaves the window
    assert out.sliding_block_changes == {a.seq_id: (1, [])}
    assert (bm.num_free_blocks, bm.sliding.num_free_blocks) == (29, 6)
    out = step(sched)  # position 12: a new block in each group
    assert out.new_block_ids == {a.seq_id: [3]}
    assert out.sliding_block_changes == {a.seq_id: (1, [3])}
    assert (bm.num_free_blocks, bm.sliding.num_free_blocks) == (28, 5)
    assert bm.sliding.block_table(a.seq_id) == [null, 1, 2, 3]
    assert bm.sliding.num_blocks_held(a.seq_id) == 3


def test_chunked_prefill_keeps_the_window_of_the_chunks_first_query():
    bm = make_bm(num_full=32, num_sliding=16, window=8)
    sched = make_scheduler(bm, budget=8)
    a = seq("a", list(range(1, 27)), max_tokens=2)  # 26 tokens in chunks of 8
    sched.add(a)
    null = bm.sliding.null_block
    step(sched)  # 0..7
    assert bm.sliding.block_table(a.seq_id) == [0, 1]
    step(sched)  # 8..15: its first query (8) sees 1..8: block 0 stays
    assert bm.sliding.block_table(a.seq_id) == [0, 1, 2, 3]
    step(sched)  # 16..23: the first query sees 9..16: blocks 0 and 1 (positions 0..7) go
    assert bm.sliding.block_table(a.seq_id) == [null, null, 2, 3, 4, 5]
    assert bm.block_table(a) == [0, 1, 2, 3, 4, 5]
    assert bm.sliding.num_free_blocks == 16 - 4


def test_a_long_request_is_not_preempted_for_blocks_its_window_left():
    # window 5, blocks of 4: at position 8 block 0 leaves the window as block 2 is needed; two sliding
    # blocks are enough forever, if the released block counts as free for that very allocation.
    bm = make_bm(num_full=32, num_sliding=2, window=5)
    sched = make_scheduler(bm)
    a = seq("a", list(range(1, 6)), max_tokens=60)
    sched.add(a)
    while not a.is_finished:
        step(sched)
        assert bm.sliding.num_blocks_held(a.seq_id) <= 2 or a.is_finished
    assert sched.num_preemptions == 0
    assert len(a.output_token_ids) == 60
    bm.check_all_free()


def test_the_sliding_group_preempts_when_it_runs_out_and_both_groups_free_on_preemption():
    # window 12: a decoding sequence holds up to 4 sliding blocks; both prompts fit (3 + 3), then at
    # position 12 the newer one is preempted for the older one's fourth block
    bm = make_bm(num_full=64, num_sliding=6, window=12)
    sched = make_scheduler(bm)
    a = seq("a", list(range(1, 11)), max_tokens=30)
    b = seq("b", list(range(100, 110)), max_tokens=30)
    sched.add(a)
    sched.add(b)
    preempted = []
    while sched.num_unfinished:
        out = step(sched)
        for victim in out.preempted:
            preempted.append(victim.seq_id)
            # a preempted sequence holds nothing in either group
            assert bm.block_table(victim) == [] and bm.sliding.block_table(victim.seq_id) == []
        bm.check_integrity()
        assert bm.num_free_blocks > 32  # the global group was never short
    assert preempted and sched.num_preemptions == len(preempted)
    assert a.is_finished and b.is_finished
    assert len(a.output_token_ids) == len(b.output_token_ids) == 30
    bm.check_all_free()


# ---- prefix caching ---------------------------------------------------------------------------------
def test_prefix_hit_takes_the_window_before_the_hit_point_and_nulls_the_rest():
    bm = make_bm(num_full=32, num_sliding=10, window=8)
    a = seq("a", list(range(1, 21)))  # 20 tokens: 5 full blocks
    admit(bm, a)
    assert bm.sliding.block_table(a.seq_id) == [0, 1, 2, 3, 4]
    bm.free(a)
    b = seq("b", list(range(1, 21)) + [90, 91, 92])
    hits = admit(bm, b)
    assert hits == [0, 1, 2, 3, 4]
    null = bm.sliding.null_block
    # a query at 20 sees 13..20: the sliding group takes a's blocks 3 and 4, and null before them
    assert bm.sliding.block_table(b.seq_id) == [null, null, null, 3, 4, 5]
    assert bm.sliding.ref_counts[3] == 1 and bm.sliding.ref_counts[0] == 0
    bm.check_integrity()


def test_prefix_hit_stops_where_the_sliding_group_lost_the_window():
    bm = make_bm(num_full=32, num_sliding=10, window=8)
    a = seq("a", list(range(1, 21)))
    admit(bm, a)
    bm.free(a)  # sliding LRU: 5..9, then a's blocks tail first: 4, 3, 2, 1, 0
    c = seq("c", list(range(200, 224)))  # 6 fresh blocks: 5..9 and a's block 4 (its key evicted)
    admit(bm, c)
    assert bm.sliding.block_table(c.seq_id) == [5, 6, 7, 8, 9, 4]
    b = seq("b", list(range(1, 21)) + [90, 91, 92])
    hits = admit(bm, b)
    # The global group still has all 5 blocks, but a hit at 20 needs a's sliding block 4: the longest
    # usable hit is 16 tokens, whose window (blocks 2 and 3) the sliding group still holds.
    assert hits == [0, 1, 2, 3]
    assert b.num_computed_tokens == 23
    null = bm.sliding.null_block
    assert bm.sliding.block_table(b.seq_id) == [null, null, 2, 3, 1, 0]
    assert bm.block_table(b)[:4] == [0, 1, 2, 3]
    bm.check_integrity()


def test_no_prefix_caching_in_either_group_when_off():
    bm = BlockManager(32, 4, enable_prefix_caching=False, sliding=SlidingBlocks(10, 4, 8, False))
    a = seq("a", list(range(1, 21)))
    admit(bm, a)
    bm.free(a)
    assert admit(bm, seq("b", list(range(1, 21)) + [5])) == []


@pytest.mark.parametrize("window", [4, 5, 8, 13])
def test_random_workload_keeps_both_groups_consistent(window):
    import random

    rng = random.Random(window)
    bm = make_bm(num_full=40, num_sliding=12, window=window)
    sched = make_scheduler(bm, budget=10, max_num_seqs=4)
    shared = [rng.randrange(3, 50) for _ in range(14)]
    seqs = []
    for i in range(12):
        prompt = shared + [rng.randrange(3, 50) for _ in range(rng.randrange(1, 12))]
        s = seq(f"r{i}", prompt if i % 2 else prompt[5:], max_tokens=rng.randrange(1, 25))
        sched.add(s)
        seqs.append(s)
    bound = -(-window // 4) + 2 + -(-10 // 4)  # the window's blocks, the partial ends, one chunk
    while sched.num_unfinished:
        step(sched, token=rng.randrange(3, 50))
        bm.check_integrity()
        for s in sched.running:
            assert bm.sliding.num_blocks_held(s.seq_id) <= bound
            assert len(bm.sliding.block_table(s.seq_id)) == len(bm.block_table(s))
    assert all(s.is_finished for s in seqs)
    assert bm.num_hit_tokens > 0
    bm.check_all_free()


def test_the_runners_tables_mirror_both_groups_through_preemption_and_prefix_hits():
    """The persistent batch (worker/input_batch.py), fed only the scheduler's diffs, holds exactly the block
    manager's tables of both groups for every scheduled sequence, every step; rows start at 1 and grow."""
    import random

    import torch

    from engine_service.worker.input_batch import InputBatch

    rng = random.Random(3)
    bm = make_bm(num_full=24, num_sliding=10, window=6)
    sched = make_scheduler(bm, budget=9, max_num_seqs=5)
    batch = InputBatch(torch.device("cpu"), seed=0, rows=1)
    batch.enable_sliding_table(null_block=bm.sliding.null_block)
    shared = [rng.randrange(3, 50) for _ in range(13)]
    for i in range(10):
        tail = [rng.randrange(3, 50) for _ in range(rng.randrange(1, 9))]
        sched.add(seq(f"r{i}", shared + tail if i % 3 else tail, max_tokens=rng.randrange(2, 20)))
    steps = 0
    while sched.num_unfinished:
        out = sched.schedule()
        batch.update(out)
        full = batch.block_table.gather(batch.rows)
        sliding = batch.sliding_table.gather(batch.rows)
        for i, s in enumerate(out.seqs):
            n = len(bm.block_table(s))
            assert full[i, :n].tolist() == bm.block_table(s), (steps, s.seq_id)
            assert sliding[i, :n].tolist() == bm.sliding.block_table(s.seq_id), (steps, s.seq_id)
        sampled = out.sampled_seqs()
        sched.update_from_output(sampled, [rng.randrange(3, 50) for _ in sampled])
        steps += 1
    assert sched.num_preemptions > 0 and bm.num_hit_tokens > 0
    assert batch.num_rows > 1
    bm.check_all_free()
