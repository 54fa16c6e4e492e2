"""Pooling on the device for embedding models (see engine_service/core/pooling.py): each sequence's hidden
states are pooled when its prompt is done, instead of logits and a draw.

A prompt may take several steps (chunked prefill), so mean pooling keeps a running float32 sum per sequence
and the first-token (cls) state is kept from the step that computed position 0; the last-token state is in
the step that samples. Those sequences skip the prefix cache (Sequence.reads_every_position), so every
position they need is computed here. The step's "tokens" are zeros: the sequence ends at its first token
(max_tokens 1), and the engine sends the vector instead (SampleResult.pooled).
"""

from __future__ import annotations

import torch

from engine_service.core.pooling import PoolingConfig
from engine_service.core.scheduler_output import ScheduledSequence
from engine_service.worker.sampler import PendingSample


class Pooler:
    def __init__(self, config: PoolingConfig):
        self.config = config
        self._partial: dict[str, torch.Tensor] = {}  # seq_id -> mean's running sum, or the cls state

    def launch(
        self, scheduled: list[ScheduledSequence], query_start: list[int], hidden: torch.Tensor
    ) -> PendingSample:
        """hidden: [T, H], the step's flat batch; `scheduled`: its entries, over the runner's kept sequences
        (InputBatch.scheduled); query_start[i]: the first row of scheduled sequence i."""
        vectors = []
        for i, item in enumerate(scheduled):
            rows = hidden[query_start[i] : query_start[i + 1]]  # [n, H]
            seq_id = item.seq.seq_id
            if self.config.method == "mean":
                total = rows.sum(0, dtype=torch.float32)
                if seq_id in self._partial:
                    total += self._partial[seq_id]
                self._partial[seq_id] = total
            elif self.config.method == "cls" and item.start == 0:
                self._partial[seq_id] = rows[0].float()
            if item.samples:
                vectors.append(self._finish(seq_id, rows, item.seq.num_prompt_tokens))
        if not vectors:
            return PendingSample.empty()
        pooled = torch.stack(vectors)  # [B, H] float32
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        pending = PendingSample(torch.zeros(len(vectors), dtype=torch.int64, device=hidden.device), None, [])
        pending.pooled = pooled
        return pending

    def _finish(self, seq_id: str, rows: torch.Tensor, num_prompt_tokens: int) -> torch.Tensor:
        if self.config.method == "last":
            return rows[-1].float()
        state = self._partial.pop(seq_id)
        return state / num_prompt_tokens if self.config.method == "mean" else state

    def forget(self, seq_ids) -> None:
        for seq_id in seq_ids:
            self._partial.pop(seq_id, None)
