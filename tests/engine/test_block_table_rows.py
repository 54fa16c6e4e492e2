"""BlockTableRows: the step's block table from rows kept across steps equals the tables it was given."""

from __future__ import annotations

import random

import numpy as np

from engine_service.worker.block_table_rows import BlockTableRows


def expected(tables):
    return [list(t) for t in tables]


def rows_of(array, tables):
    return [list(array[i, : len(t)]) for i, t in enumerate(tables)]


def test_appends_rebuilds_and_forgets_match_a_fresh_table_every_step():
    rng = random.Random(0)
    rows = BlockTableRows(rows=2, width=2)  # both dimensions must grow
    live: dict[str, list[int]] = {}
    next_block = 0
    for step in range(300):
        for seq_id in list(live):
            r = rng.random()
            if r < 0.05:  # finished
                del live[seq_id]
                rows.forget([seq_id])
            elif r < 0.08:  # preempted and rescheduled: a new list
                live[seq_id] = [next_block + i for i in range(rng.randint(1, 4))]
                next_block += 4
            elif r < 0.10:  # rebuilt in place (a worker's mirror before the fix would do this)
                live[seq_id][:] = [next_block]
                next_block += 1
            elif r < 0.5:
                live[seq_id].append(next_block)  # one more block, as a decode step adds
                next_block += 1
        if len(live) < 20:
            live[f"s{step}"] = [next_block + i for i in range(rng.randint(1, 5))]
            next_block += 5
        ids = rng.sample(sorted(live), k=rng.randint(1, len(live)))
        tables = [live[s] for s in ids]
        table = rows.gather(ids, tables)
        assert table.shape == (len(ids), max(len(t) for t in tables)) and table.dtype == np.int64
        assert rows_of(table, tables) == expected(tables), step
    assert len(rows) <= len(live)  # finished sequences left no row behind


def test_forget_frees_rows_for_reuse():
    rows = BlockTableRows(rows=1, width=4)
    rows.gather(["a"], [[1, 2]])
    rows.forget(["a"])
    table = rows.gather(["b"], [[7]])
    assert list(table[0, :1]) == [7] and rows.array.shape[0] == 1 and len(rows) == 1
