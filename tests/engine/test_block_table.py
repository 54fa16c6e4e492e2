"""The persistent batch's block tables: the step's table, from rows kept across steps, equals the tables it
was given (new sequences, appended blocks, preemption and resumption with a new table, finishes)."""

from __future__ import annotations

import random

import numpy as np
import torch

from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler_output import NewSequenceData, SchedulerOutput
from engine_service.worker.block_table import BlockTable
from engine_service.worker.input_batch import InputBatch

CPU = torch.device("cpu")


def expected(tables):
    return [list(t) for t in tables]


def rows_of(array, tables):
    return [list(array[i, : len(t)]) for i, t in enumerate(tables)]


def step(ids: list[str], **changes) -> SchedulerOutput:
    """A decode step of `ids` (one token each) with the given diff."""
    return SchedulerOutput(
        seq_ids=ids, num_computed_tokens=[3] * len(ids), num_new_tokens=[1] * len(ids), **changes
    )


def new_seq(seq_id: str, block_ids: list[int]) -> NewSequenceData:
    return NewSequenceData(seq_id, 0, [1, 2, 3], SamplingParams(), list(block_ids))


def test_appends_rebuilds_and_forgets_match_a_fresh_table_every_step():
    rng = random.Random(0)
    batch = InputBatch(CPU, seed=0, rows=2)
    batch.block_table = BlockTable(rows=2, width=2)  # both dimensions must grow
    live: dict[str, list[int]] = {}
    parked: dict[str, list[int]] = {}  # preempted, waiting to resume
    next_block = 0
    for n in range(300):
        out = step([])
        for seq_id in list(live):
            r = rng.random()
            if r < 0.05:  # finished
                del live[seq_id]
                out.finished_seq_ids.append(seq_id)
            elif r < 0.08:  # preempted: it leaves the batch, and comes back later with a new table
                parked[seq_id] = live.pop(seq_id)
                out.preempted_seq_ids.append(seq_id)
            elif r < 0.5:
                live[seq_id].append(next_block)  # one more block, as a decode step adds
                out.new_block_ids[seq_id] = [next_block]
                next_block += 1
        for seq_id in list(parked):
            if seq_id not in out.preempted_seq_ids and rng.random() < 0.3:
                del parked[seq_id]
                live[seq_id] = [next_block + i for i in range(rng.randint(1, 4))]
                next_block += 4
                out.resumed_seq_ids.append(seq_id)
                out.new_block_ids[seq_id] = list(live[seq_id])
        if len(live) < 20:
            live[f"s{n}"] = [next_block + i for i in range(rng.randint(1, 5))]
            next_block += 5
            out.new_seqs.append(new_seq(f"s{n}", live[f"s{n}"]))
        ids = rng.sample(sorted(live), k=rng.randint(1, len(live)))
        out.seq_ids, out.num_computed_tokens, out.num_new_tokens = ids, [3] * len(ids), [1] * len(ids)
        batch.update(out)
        tables = [live[s] for s in ids]
        table = batch.block_table.gather(batch.rows)
        assert table.shape == (len(ids), max(len(t) for t in tables)) and table.dtype == np.int64
        assert rows_of(table, tables) == expected(tables), n
    assert len(batch.row_of) <= len(live)  # finished and preempted sequences left no row behind


def test_forget_frees_rows_for_reuse():
    batch = InputBatch(CPU, seed=0, rows=1)
    batch.update(step(["a"], new_seqs=[new_seq("a", [1, 2])]))
    batch.update(step(["b"], new_seqs=[new_seq("b", [7])], finished_seq_ids=["a"]))
    table = batch.block_table.gather(batch.rows)
    assert list(table[0, :1]) == [7] and batch.num_rows == 1 and len(batch.row_of) == 1
