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
        width = max(map(len, tables), default=1) or 1
        if width > self.array.shape[1]:
            self._widen(width)
        rows = []
        append, known_rows = rows.append, self._rows
        for seq_id, table in zip(seq_ids, tables, strict=True):  # hot: once per sequence per step
            entry = known_rows.get(seq_id)
            if entry is not None and entry[1] is table:
                row, _, known, last = entry
                n = len(table)
                if n == known and (not n or table[-1] == last):  # unchanged: most sequences, most steps
                    append(row)
                    continue
                if n > known and (not known or table[known - 1] == last):  # appended to
                    self.array[row, known:n] = table[known:]
                    known_rows[seq_id] = (row, table, n, table[-1])
                    append(row)
                    continue
            # New, or rebuilt (another list, a shorter one, a changed known block): written whole.
            row = entry[0] if entry is not None else self._take_row()
            n = len(table)
            self.array[row, :n] = table
            known_rows[seq_id] = (row, table, n, table[-1] if n else -1)
            append(row)
        return self.array[rows, :width]

    def _take_row(self) -> int:
        if not self._free:
            old = self.array
            self.array = np.zeros((2 * old.shape[0], old.shape[1]), dtype=np.int64)
            self.array[: old.shape[0]] = old
            self._free = list(range(self.array.shape[0] - 1, old.shape[0] - 1, -1))
        return self._free.pop()

    def _widen(self, width: int) -> None:
        old = self.array
        self.array = np.zeros((old.shape[0], max(width, 2 * old.shape[1])), dtype=np.int64)
        self.array[:, : old.shape[1]] = old
