"""The running sequences' block tables as rows of one numpy array, kept from step to step.

A step's attention needs a [B, width] table of block ids. Rebuilding it from B Python lists each step
walks every block id of every sequence (tens of thousands at a large batch) in the interpreter. Here each
sequence keeps a row; a step writes only the blocks appended since the sequence's last step (at most one
in a decode step) and gathers its rows in one numpy indexing.

A table list only grows by appending while its sequence runs (BlockManager; the workers' mirror). A
different list object, a shorter one, or a changed last known block means it was rebuilt (preemption):
the row is written whole. `forget` frees the rows of sequences that finished, were aborted or preempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class BlockTableRows:
    def __init__(self, rows: int = 64, width: int = 64):
        self.array = np.zeros((rows, width), dtype=np.int64)  # both dimensions grow by doubling
        # seq_id -> (row, the table list last seen, its length and last block then)
        self._rows: dict[str, tuple[int, list[int], int, int]] = {}
        self._free = list(range(rows - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._rows)

    def forget(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            entry = self._rows.pop(seq_id, None)
            if entry is not None:
                self._free.append(entry[0])

    def gather(self, seq_ids: Sequence[str], tables: Sequence[list[int]]) -> np.ndarray:
        """[B, width] int64: row i holds tables[i] (the block ids of seq_ids[i]), padded with whatever the
        row held before (callers bound every read by the sequence's length)."""
        rows = []
        array, known_rows = self.array, self._rows
        width = 1
        for seq_id, table in zip(seq_ids, tables, strict=True):
            n = len(table)
            if n > array.shape[1]:
                array = self._widen(n)
            width = max(width, n)
            entry = known_rows.get(seq_id)
            if entry is not None and entry[1] is table and entry[2] <= n:
                row, _, known, last = entry
                if known and table[known - 1] != last:
                    known = 0  # rebuilt in place: write it whole
                if known < n:
                    array[row, known:n] = table[known:]
                    known_rows[seq_id] = (row, table, n, table[-1])
            else:
                row = entry[0] if entry is not None else self._take_row()
                array = self.array  # _take_row may have grown it
                array[row, :n] = table
                known_rows[seq_id] = (row, table, n, table[-1] if n else -1)
            rows.append(row)
        return self.array[rows, :width]

    def _take_row(self) -> int:
        if not self._free:
            old = self.array
            self.array = np.zeros((2 * old.shape[0], old.shape[1]), dtype=np.int64)
            self.array[: old.shape[0]] = old
            self._free = list(range(self.array.shape[0] - 1, old.shape[0] - 1, -1))
        return self._free.pop()

    def _widen(self, width: int) -> np.ndarray:
        old = self.array
        self.array = np.zeros((old.shape[0], max(width, 2 * old.shape[1])), dtype=np.int64)
        self.array[:, : old.shape[1]] = old
        return self.array
