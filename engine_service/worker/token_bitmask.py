"""A step's grammar mask, as the engine hands it to the sampler: which rows it constrains and their bits.

    bits[r, w] bit b set  <=>  token 32 * w + b is allowed in row rows[r]     int32 [R, ceil(V / 32)]

Rows are indices into the step's sampled rows (the logits' rows); unconstrained rows are not in it. The
bits are filled on the host (pinned when bound for a GPU: one non-blocking copy) by the grammar engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine_service.worker import host_copy


@dataclass(frozen=True)
class TokenBitmask:
    rows: list[int]
    bits: torch.Tensor  # int32 [len(rows), words] on the host

    @staticmethod
    def words(vocab_size: int) -> int:
        return -(-vocab_size // 32)

    @classmethod
    def empty(cls, num_rows: int, vocab_size: int, device: torch.device) -> TokenBitmask:
        """A host buffer for `num_rows` rows (rows set by the caller), pinned for a GPU; a fresh one each
        step, so a copy still queued from the previous step never reads bits being rewritten (host_copy)."""
        words = cls.words(vocab_size)
        host, _ = host_copy.pinned(num_rows * words, torch.int32, device)
        return cls([], host.view(num_rows, words))

    def to_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits int32 [R, W], rows int64 [R]) on `device`, copied without waiting for the device."""
        (rows,) = host_copy.int64_parts([self.rows], device)
        return self.bits.to(device, non_blocking=True), rows
