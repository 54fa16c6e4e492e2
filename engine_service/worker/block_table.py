"""The persistent batch's block tables: one row of block ids per row of the batch, kept from step to step.

A step's attention needs a [B, width] table of block ids. Rebuilding it from B Python lists each step
walks every block id of every sequence (tens of thousands at a large batch) in the interpreter. Here a
row is written whole when its sequence joins the batch and appended to when the scheduler reports new
blocks (at most one per sequence in a decode step); a step gathers its rows in one numpy indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BlockTable:
    def __init__(self, rows: int = 64, width: int = 64):
        self.array = np.zeros((rows, width), dtype=np.int64)  # both dimensions grow by doubling
        self.num_blocks = np.zeros(rows, dtype=np.int64)  # each row's length

    @property
    def num_rows(self) -> int:
        return self.array.shape[0]

    def grow_rows(self, num_rows: int) -> None:
        old, old_len = self.array, self.num_blocks
        self.array = np.zeros((num_rows, old.shape[1]), dtype=np.int64)
        self.array[: old.shape[0]] = old
        self.num_blocks = np.zeros(num_rows, dtype=np.int64)
        self.num_blocks[: old.shape[0]] = old_len

    def set_row(self, row: int, block_ids: Sequence[int]) -> None:
        self.num_blocks[row] = 0
        self.append(row, block_ids)

    def append(self, row: int, block_ids: Sequence[int]) -> None:
        start = int(self.num_blocks[row])
        end = start + len(block_ids)
        if end > self.array.shape[1]:
            self._widen(end)
        self.array[row, start:end] = block_ids
        self.num_blocks[row] = end

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """[B, width] int64: the tables of `rows`, width their longest (at least 1), each padded with
        whatever its row held before (callers bound every read by the sequence's length)."""
        width = int(self.num_blocks[rows].max(initial=1)) or 1
        return self.array[rows, :width]

    def _widen(self, width: int) -> None:
        old = self.array
        self.array = np.zeros((old.shape[0], max(width, 2 * old.shape[1])), dtype=np.int64)
        self.array[:, : old.shape[1]] = old
