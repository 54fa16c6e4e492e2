"""A step's model inputs on the host, laid out flat (see engine_service/ops/torch_ops.py for the layout).

Built from the step's SchedulerOutput and the persistent batch (input_batch.py): each batch entry i feeds
tokens [start_i, start_i + n_i) of its sequence; the prompt's come from the batch, the output tokens from
the step's flat `output_token_ids`. Positions, KV slots and lengths are numpy arithmetic over the entries.

    query_start  0 ─ n_0 ─ n_0+n_1 ─ ... ─ T          (T tokens in all)
    positions    start_0 .. start_0+n_0-1 | start_1 .. | ...
    slots        block_table[entry, position // block_size] * block_size + position % block_size
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.core.sequence import PLACEHOLDER
from engine_service.layers.attention import AttentionMetadata
from engine_service.worker import host_copy
from engine_service.worker.input_batch import InputBatch


@dataclass
class StepInputs:
    input_ids: list[int] | np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slots: np.ndarray  # [T]
    query_start: np.ndarray  # [B + 1]
    seq_lens: np.ndarray  # [B]
    logits_indices: np.ndarray  # [S] the flat index of each sampling entry's last token
    table: np.ndarray  # [B, width] the entries' block tables
    max_query_len: int
    sample_positions: np.ndarray  # [S] which output token each sample is (0 = the first)
    num_placeholders: int  # PLACEHOLDER input ids: filled on the device from their rows' last tokens
    placeholder_at: np.ndarray  # [P] their flat indices (unset when every input is one, in a decode)
    placeholder_rows: np.ndarray  # [P] and their batch rows
    # A hybrid model's sliding-window group (input_batch.py): its KV slots [T] and block tables [B, width]
    sliding_slots: np.ndarray | None = None
    sliding_table: np.ndarray | None = None

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1 and len(self.logits_indices) == len(self.seq_lens)

    @property
    def all_placeholders(self) -> bool:
        """Every input is the previous step's token of its own row (an async decode): the fix-up is one
        gather of the batch's rows."""
        return self.num_placeholders == len(self.seq_lens) == len(self.positions)

    @classmethod
    def build(cls, out: SchedulerOutput, batch: InputBatch, bs: int) -> StepInputs:
        if max(out.num_new_tokens) == 1:
            return cls._build_decode(out, batch, bs)
        rows, prompt_lens = batch.rows, batch.prompt_lens
        B = len(rows)
        starts = np.asarray(out.num_computed_tokens, dtype=np.int64)
        counts = np.asarray(out.num_new_tokens, dtype=np.int64)
        query_start = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(counts, out=query_start[1:])
        T = int(query_start[-1])
        entry = np.repeat(np.arange(B), counts)  # [T] each token's batch entry
        positions = np.arange(T, dtype=np.int64) + np.repeat(starts - query_start[:-1], counts)
        table = batch.block_table.gather(rows)
        ends = starts + counts
        input_ids = _input_ids(out, batch)
        at = np.flatnonzero(input_ids == PLACEHOLDER)
        entries = batch.sample_entries
        sliding_slots = sliding_table = None
        if batch.sliding_table is not None:
            sliding_table = batch.sliding_table.gather(rows)
            sliding_slots = sliding_table[entry, positions // bs] * bs + positions % bs
        return cls(
            input_ids=input_ids,
            positions=positions,
            slots=table[entry, positions // bs] * bs + positions % bs,
            query_start=query_start,
            seq_lens=ends,
            logits_indices=query_start[1:][entries] - 1,
            table=table,
            max_query_len=int(counts.max()),
            sample_positions=(ends - prompt_lens)[entries],
            num_placeholders=len(at),
            placeholder_at=at,
            placeholder_rows=rows[entry[at]],
            sliding_slots=sliding_slots,
            sliding_table=sliding_table,
        )

    @classmethod
    def _build_decode(cls, out: SchedulerOutput, batch: InputBatch, bs: int) -> StepInputs:
        """`build` for one token per entry (steady decode): the flat index is the entry's."""
        rows, prompt_lens = batch.rows, batch.prompt_lens
        B = len(rows)
        starts = np.asarray(out.num_computed_tokens, dtype=np.int64)  # the one token's position
        table = batch.block_table.gather(rows)
        tokens = out.output_token_ids
        if len(tokens) == B:  # every input is an output token: the list as it is
            input_ids = tokens
            num_placeholders = tokens.count(PLACEHOLDER)
        else:  # some entries feed the last token of their prompt
            input_ids = _input_ids(out, batch)
            num_placeholders = int((input_ids == PLACEHOLDER).sum())
        at = rows_at = _EMPTY
        if 0 < num_placeholders < B:
            at = np.flatnonzero(np.asarray(input_ids) == PLACEHOLDER)
            rows_at = rows[at]
        entries = batch.sample_entries
        seq_lens = starts + 1
        sliding_slots = sliding_table = None
        if batch.sliding_table is not None:
            sliding_table = batch.sliding_table.gather(rows)
            sliding_slots = sliding_table[np.arange(B), starts // bs] * bs + starts % bs
        return cls(
            input_ids=input_ids,
            positions=starts,
            slots=table[np.arange(B), starts // bs] * bs + starts % bs,
            query_start=np.arange(B + 1, dtype=np.int64),
            seq_lens=seq_lens,
            logits_indices=entries,
            table=table,
            max_query_len=1,
            sample_positions=(seq_lens - prompt_lens)[entries],
            num_placeholders=num_placeholders,
            placeholder_at=at,
            placeholder_rows=rows_at,
            sliding_slots=sliding_slots,
            sliding_table=sliding_table,
        )

    def to_device(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list]:
        """(input ids, positions, attention metadata, [logits indices, placeholder at, placeholder rows]) on
        `dev`, in one copy that does not wait for the device (see host_copy)."""
        host = [
            self.input_ids,
            self.positions,
            self.slots,
            self.query_start,
            self.seq_lens,
            self.logits_indices,
            self.table.reshape(-1),
            self.placeholder_at,
            self.placeholder_rows,
        ]
        if self.sliding_table is not None:  # a hybrid model: the sliding group's, in the same copy
            host += [self.sliding_slots, self.sliding_table.reshape(-1)]
        parts = host_copy.int64_parts(host, dev)
        input_ids, positions, slots, query_start, seq_lens, indices, flat_table, at_dev, rows_dev = parts[:9]
        groups = ()
        if self.sliding_table is not None:
            sliding_slots, sliding_flat = parts[9:]
            groups = ((sliding_slots, sliding_flat.view(self.sliding_table.shape).to(torch.int32)),)
        meta = AttentionMetadata(
            slot_mapping=slots,
            query_start_loc=query_start.to(torch.int32),
            seq_lens=seq_lens.to(torch.int32),
            block_tables=flat_table.view(self.table.shape).to(torch.int32),
            max_query_len=self.max_query_len,
            max_seq_len=int(self.seq_lens.max()),
            groups=groups,
        )
        return input_ids, positions, meta, [indices, at_dev, rows_dev]


_EMPTY = np.zeros(0, dtype=np.int64)


def _input_ids(out: SchedulerOutput, batch: InputBatch) -> np.ndarray:
    """[T] every entry's input tokens: the prompt's from the batch, then its output tokens from the step."""
    ids: list[int] = []
    k = 0
    tokens, states = out.output_token_ids, batch.row_states
    columns = zip(
        batch.rows.tolist(),
        batch.prompt_lens.tolist(),
        out.num_computed_tokens,
        out.num_new_tokens,
        strict=True,
    )
    for row, num_prompt, start, n in columns:  # once per entry of a prefill or mixed step
        end = start + n
        if start < num_prompt:
            ids += states[row].prompt_token_ids[start : min(end, num_prompt)]
        first = max(start, num_prompt)
        if end > first:
            ids += tokens[k : k + end - first]
            k += end - first
    return np.array(ids, dtype=np.int64)
