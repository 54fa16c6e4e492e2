"""Step messages: a worker's persistent batch, fed only what changed, rebuilds exactly what the scheduler
decided.

A real Scheduler and BlockManager run a random workload with chunked prefill, shared prefixes, preemption
and aborts; every step's SchedulerOutput goes through pickle (what the tensor-parallel driver sends) into an
InputBatch, and the step rebuilt from it must match the original one: tokens, positions, samples flags,
block tables, and (for every sequence that samples) the whole token history the sampler sees.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import torch

from engine_service.core.block_manager import BlockManager
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler, SchedulerOutput
from engine_service.core.sequence import Sequence
from engine_service.worker.input_batch import InputBatch
from engine_service.worker.step_inputs import StepInputs

BLOCK_SIZE = 4


def check_step(out: SchedulerOutput, batch: InputBatch, bm: BlockManager) -> int:
    """Asserts the worker's view of `out` equals the scheduler's; returns the number of sampling entries."""
    step = StepInputs.build(out, batch, BLOCK_SIZE)
    query_start = step.query_start.tolist()
    input_ids = np.asarray(step.input_ids).tolist()
    sampled = set(batch.sample_entries.tolist())
    num_checked = 0
    for i, a in enumerate(out.scheduled):
        end = a.start + a.num_new_tokens
        lo, hi = query_start[i], query_start[i + 1]
        assert (int(step.positions[lo]), hi - lo, i in sampled) == (a.start, a.num_new_tokens, a.samples)
        assert input_ids[lo:hi] == a.seq.token_ids_slice(a.start, end)
        table = bm.block_table(a.seq)
        assert step.table[i, : len(table)].tolist() == table
        state = batch.row_states[int(batch.rows[i])]
        if a.samples:  # what penalties, min_tokens and seeds read: the history before this draw
            history = state.prompt_token_ids + state.output_token_ids[: end - a.seq.num_prompt_tokens]
            assert history == a.seq.token_ids_slice(0, end)
            assert state.index == a.seq.index
            assert state.params == a.seq.params
            num_checked += 1
    return num_checked


def run_workload(seed: int, num_blocks: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, block_size=BLOCK_SIZE)
    scheduler = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=24, max_model_len=200)
    batch = InputBatch(torch.device("cpu"), seed=0, rows=2)  # the rows must grow
    shared = [rng.randrange(3, 100) for _ in range(12)]
    seqs: list[Sequence] = []
    for i in range(14):
        prompt = (shared if i % 3 == 0 else []) + [rng.randrange(3, 100) for _ in range(rng.randrange(1, 30))]
        # Penalties: the worker keeps these sequences' output tokens (its sampler reads them).
        params = SamplingParams(max_tokens=rng.randrange(1, 25), ignore_eos=True, presence_penalty=0.5)
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
        wire = pickle.loads(pickle.dumps(out))
        assert not wire.seqs and not wire.preempted  # the driver's Sequence objects stay home
        batch.update(wire)
        wire.seqs = out.seqs  # (only to compare against the scheduler's sequences below)
        num_checked += check_step(wire, batch, bm)
        sampling = out.sampled_seqs()
        scheduler.update_from_output(sampling, [rng.randrange(3, 100) for _ in sampling])
        running = [s for s in scheduler.running if s.num_output_tokens > 2]
        if running and rng.random() < 0.05:  # an abort between steps
            scheduler.abort([rng.choice(running)])
        num_steps += 1
    # The last finishes travel with the next step: the batch holds those sequences only, then nothing.
    assert set(batch.states) == set(scheduler._finished_ids)
    batch.update(SchedulerOutput(finished_seq_ids=scheduler._finished_ids))
    assert not batch.states and not batch.row_of
    return num_steps, num_checked, scheduler.num_preemptions


def test_batch_matches_the_scheduler_through_preemption_prefix_hits_and_aborts():
    total_preemptions = 0
    for seed in range(12):
        num_steps, num_checked, preemptions = run_workload(seed, num_blocks=20)  # the longest needs 17
        assert num_steps > 20 and num_checked > 20
        total_preemptions += preemptions
    assert total_preemptions > 10  # the small cache really preempts


def test_a_decode_step_sends_a_few_bytes_per_sequence():
    bm = BlockManager(512, block_size=16)
    scheduler = Scheduler(bm, max_num_seqs=64, max_num_batched_tokens=8192, max_model_len=4096)
    for i in range(64):
        params = SamplingParams(max_tokens=100, ignore_eos=True, temperature=0.7, top_p=0.9)
        scheduler.add(Sequence(f"r{i}#0", f"r{i}", 0, list(range(3, 3 + 100)), params))
    sizes = []
    for _ in range(5):
        out = scheduler.schedule()
        sizes.append(len(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)))
        sampling = out.sampled_seqs()
        scheduler.update_from_output(sampling, [7] * len(sampling))
    assert sizes[0] > 64 * 100  # the first step carries the prompts and params
    assert max(sizes[1:]) < 64 * 24  # then a few numbers per sequence: no params, no block table
