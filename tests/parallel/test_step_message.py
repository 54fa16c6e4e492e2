"""Step messages: a worker's mirror, fed only what changed, rebuilds exactly what the scheduler decided.

A real Scheduler and BlockManager run a random workload with chunked prefill, shared prefixes, preemption
and aborts; every step goes through StepEncoder -> pickle -> SequenceMirror, and the rebuilt step must
match the original one: tokens, positions, samples flags, block tables, and (for every sequence that
samples) the whole token history the sampler sees.
"""

from __future__ import annotations

import pickle
import random

from engine_service.core.block_manager import BlockManager
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler, SchedulerOutput
from engine_service.core.sequence import Sequence
from engine_service.worker.step_message import SequenceMirror, StepEncoder


def run_workload(seed: int, num_blocks: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=24, max_model_len=200)
    encoder, mirror = StepEncoder(), SequenceMirror()
    shared = [rng.randrange(3, 100) for _ in range(12)]
    seqs: list[Sequence] = []
    for i in range(14):
        prompt = (shared if i % 3 == 0 else []) + [rng.randrange(3, 100) for _ in range(rng.randrange(1, 30))]
        params = SamplingParams(max_tokens=rng.randrange(1, 25), ignore_eos=True)
        seqs.append(Sequence(f"r{i}#0", f"r{i}", 0, prompt, params))
    pending = list(seqs)
    num_steps = num_checked = 0
    while pending or scheduler.num_unfinished:
        assert num_steps < 2000, "the workload does not finish"
        if pending and rng.random() < 0.5:
            scheduler.add(pending.pop(0))
        out = scheduler.schedule()
        if out.is_empty:
            continue
        tables = [bm.block_table(s.seq) for s in out.scheduled]
        wire = pickle.loads(pickle.dumps(encoder.encode(out, tables)))
        rebuilt, rebuilt_tables, _ = mirror.apply(wire)
        for a, b, table, b_tab in zip(out.scheduled, rebuilt.scheduled, tables, rebuilt_tables, strict=True):
            end = a.start + a.num_new_tokens
            assert (b.start, b.num_new_tokens, b.samples) == (a.start, a.num_new_tokens, a.samples)
            assert b.seq.token_ids_slice(b.start, end) == a.seq.token_ids_slice(a.start, end)
            assert b_tab == table
            if a.samples:  # what penalties, min_tokens and seeds read: the history before this draw
                assert b.seq.token_ids_slice(0, end) == a.seq.token_ids_slice(0, end)
                assert b.seq.index == a.seq.index
                assert b.seq.params == a.seq.params
                num_checked += 1
        sampling = [s.seq for s in out.scheduled if s.samples]
        finished = scheduler.update_from_output(sampling, [rng.randrange(3, 100) for _ in sampling])
        encoder.forget(s.seq_id for s in finished)
        running = [s for s in scheduler.running if s.num_output_tokens > 2]
        if running and rng.random() < 0.05:  # an abort between steps
            victim = rng.choice(running)
            scheduler.abort([victim])
            encoder.forget([victim.seq_id])
        num_steps += 1
    mirror.apply(encoder.encode(SchedulerOutput(), []))  # the last forgets travel with the next message
    assert encoder.num_known == 0 and not mirror.seqs and not mirror.tables
    return num_steps, num_checked, scheduler.num_preemptions


def test_mirror_matches_the_scheduler_through_preemption_prefix_hits_and_aborts():
    total_preemptions = 0
    for seed in range(12):
        num_steps, num_checked, preemptions = run_workload(seed, num_blocks=20)  # the longest needs 17
        assert num_steps > 20 and num_checked > 20
        total_preemptions += preemptions
    assert total_preemptions > 10  # the small cache really preempts


def test_a_decode_step_sends_a_few_bytes_per_sequence():
    bm = BlockManager(512, block_size=16)
    scheduler = Scheduler(bm, max_num_seqs=64, max_num_batched_tokens=8192, max_model_len=4096)
    encoder = StepEncoder()
    for i in range(64):
        params = SamplingParams(max_tokens=100, ignore_eos=True, temperature=0.7, top_p=0.9)
        scheduler.add(Sequence(f"r{i}#0", f"r{i}", 0, list(range(3, 3 + 100)), params))
    sizes = []
    for _ in range(5):
        out = scheduler.schedule()
        tables = [bm.block_table(s.seq) for s in out.scheduled]
        sizes.append(len(pickle.dumps(encoder.encode(out, tables), protocol=pickle.HIGHEST_PROTOCOL)))
        sampling = [s.seq for s in out.scheduled if s.samples]
        scheduler.update_from_output(sampling, [7] * len(sampling))
    assert sizes[0] > 64 * 100  # the first step carries the prompts and params
    assert max(sizes[1:]) < 64 * 24  # then one short tuple per sequence: no params, no block table
