"""The persistent batch: what the model runner keeps of every sequence it runs, updated from each step's diff.

As vLLM's InputBatch: a sequence arrives whole once (SchedulerOutput.new_seqs) and is kept as a
CachedSequence (prompt, params, noise seed) until a step reports it finished. While it is in the batch it
holds a row, stable from step to step:

    row r   block_table[r]        its block ids: written when it joins, appended to as blocks come
            sliding_table[r]      a hybrid model's sliding-window group's (core/sliding_blocks.py): the
                                  same positions, the blocks before its window the null block
            prompt_len[r], the    what its draws ask (RowParams: temperature, seed, processed,
            sampling columns      min_tokens, num_logprobs), set once when it joins
            last_token[r]         the last token it sampled, on the device: what fills a PLACEHOLDER input

A preempted sequence gives its row up and takes a new one when it resumes (its state, seed included,
stays). A step's batch is its rows in the scheduler's order; the rows, the sampling rows on the device
(SamplingBatch) and the batch entries whose history the sampler reads are laid out again only when the
step does not say `same_batch`. Per-row request state that a later feature needs (a grammar, prompt
logprobs) belongs in CachedSequence and a column here, set in `_take_row`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler_output import ScheduledSequence, SchedulerOutput
from engine_service.worker import host_copy
from engine_service.worker.block_table import BlockTable
from engine_service.worker.sampler import RowParams, SamplingBatch, sampling_seed


@dataclass(eq=False, slots=True)
class CachedSequence:
    """A sequence as the runner keeps it, from its first step to its finish (through preemptions)."""

    seq_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    sampling_seed: int
    row_params: RowParams
    # The output tokens its steps' inputs revealed, kept only for the sequences whose sampling reads them
    # (penalties: those run without placeholders, see Engine.step_packed).
    output_token_ids: list[int] = field(default_factory=list)
    row: int = -1  # its row while in the batch; -1 while preempted

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


class InputBatch:
    def __init__(self, device: torch.device, seed: int, rows: int = 64):
        self.device = device
        self._rng = random.Random(seed)  # noise seeds of sequences whose request has none
        self.states: dict[str, CachedSequence] = {}
        self.row_of: dict[str, int] = {}  # seq_id -> row, for the sequences in the batch
        self.block_table = BlockTable(rows)
        self.sliding_table: BlockTable | None = None  # a hybrid model's (enable_sliding_table)
        self.sliding_null = 0  # the sliding group's null block
        self.row_states: list[CachedSequence | None] = [None] * rows
        self.prompt_len = np.zeros(rows, dtype=np.int64)
        self.temperature = np.zeros(rows, dtype=np.float32)
        self.seed = np.zeros(rows, dtype=np.int64)
        self.processed = np.zeros(rows, dtype=bool)
        self.min_tokens = np.zeros(rows, dtype=np.int64)
        self.num_logprobs = np.full(rows, -1, dtype=np.int64)
        self.last_token = torch.zeros(rows, dtype=torch.int64, device=device)  # [rows]
        self._free_rows = list(range(rows - 1, -1, -1))
        self._num_with_history = 0  # cached sequences whose sampling reads their output tokens
        # The step's layout, kept while the scheduler says the batch is the same:
        self.rows = np.zeros(0, dtype=np.int64)  # [B] the batch's rows, in order
        self.prompt_lens = np.zeros(0, dtype=np.int64)  # [B] their prompt lengths
        self.sample_entries = np.zeros(0, dtype=np.int64)  # [S] the batch entries that sample
        self.rows_device = torch.zeros(0, dtype=torch.int64, device=device)  # [B]
        self.sample_rows_device = self.rows_device  # [S]
        self.sampling: SamplingBatch | None = None
        self.history: list[tuple[int, CachedSequence]] = []  # (entry, state) whose outputs are kept

    @property
    def num_rows(self) -> int:
        return len(self.row_states)

    def enable_sliding_table(self, null_block: int) -> None:
        """Keep a second table per row, for a hybrid model's sliding-window group (before any step)."""
        self.sliding_table = BlockTable(self.num_rows)
        self.sliding_null = null_block

    # ---- the diff -----------------------------------------------------------------------------------
    def update(self, out: SchedulerOutput) -> None:
        """Apply a step's diff: drop what finished, free the preempted rows, take in the new and resumed
        sequences, append new blocks; then lay the step out, unless it is the same batch as the last."""
        states, table = self.states, self.block_table
        for seq_id in out.finished_seq_ids:
            state = states.pop(seq_id, None)
            if state is not None:
                self._release_row(state)
                self._num_with_history -= state.params.has_penalties
        for seq_id in out.preempted_seq_ids:
            self._release_row(states[seq_id])
        for new in out.new_seqs:
            seed = sampling_seed(new.params, new.index, self._rng)
            params = new.params
            state = CachedSequence(
                new.seq_id, new.index, new.prompt_token_ids, params, seed, RowParams.of(params)
            )
            states[new.seq_id] = state
            self._num_with_history += params.has_penalties
            table.set_row(self._take_row(state), new.block_ids)
        resumed = out.resumed_seq_ids
        for seq_id in resumed:  # its new table replaces the one it had
            table.set_row(self._take_row(states[seq_id]), out.new_block_ids[seq_id])
        row_of = self.row_of
        for seq_id, block_ids in out.new_block_ids.items():
            if not (resumed and seq_id in resumed):
                table.append(row_of[seq_id], block_ids)
        if out.sliding_block_changes:
            self._apply_sliding_changes(out)
        if not out.same_batch:
            self._lay_out(out)
        if self.history:
            self._record_outputs(out)

    def scheduled(self, out: SchedulerOutput) -> list[ScheduledSequence]:
        """The step's entries as views over the kept sequences (.seq: a CachedSequence), in batch order: for
        the per-entry work of prefill steps (prompt logprobs, pooling), on every tensor-parallel rank."""
        skip = set(out.partial)
        states = self.states
        columns = zip(out.seq_ids, out.num_new_tokens, out.num_computed_tokens, strict=True)
        return [
            ScheduledSequence(states[seq_id], n, start, i not in skip)
            for i, (seq_id, n, start) in enumerate(columns)
        ]

    def record_sampled(self, tokens: torch.Tensor | None) -> None:
        """The step's sampled tokens ([S], in the order of its sampling entries) become their rows' last."""
        if tokens is not None:
            self.last_token.index_copy_(0, self.sample_rows_device, tokens)

    # ---- internals -----------------------------------------------------------------------------------
    def _apply_sliding_changes(self, out: SchedulerOutput) -> None:
        """The sliding group's changes: a new or resumed row starts empty (its change is its whole table);
        then ids are appended, and the entries before the window point at the null block."""
        sliding, row_of = self.sliding_table, self.row_of
        fresh = {new.seq_id for new in out.new_seqs}.union(out.resumed_seq_ids)
        for seq_id, (num_null, block_ids) in out.sliding_block_changes.items():
            row = row_of[seq_id]
            if seq_id in fresh:
                sliding.set_row(row, block_ids)
            else:
                sliding.append(row, block_ids)
            sliding.array[row, :num_null] = self.sliding_null

    def _lay_out(self, out: SchedulerOutput) -> None:
        row_of = self.row_of
        self.rows = rows = np.array([row_of[seq_id] for seq_id in out.seq_ids], dtype=np.int64)
        self.prompt_lens = self.prompt_len[rows]
        entries = np.arange(len(rows), dtype=np.int64)
        if out.partial:
            entries = np.delete(entries, out.partial)
        self.sample_entries = entries
        sample_rows = rows[entries]
        if out.partial:
            self.rows_device, self.sample_rows_device = host_copy.int64_parts(
                [rows, sample_rows], self.device
            )
        else:
            (self.rows_device,) = host_copy.int64_parts([rows], self.device)
            self.sample_rows_device = self.rows_device
        self.sampling = SamplingBatch.build(
            [self.row_states[r] for r in sample_rows.tolist()],
            self.temperature[sample_rows],
            self.seed[sample_rows],
            self.processed[sample_rows],
            self.min_tokens[sample_rows],
            self.num_logprobs[sample_rows],
            self.device,
        )
        self.history = []
        if self._num_with_history:
            states = self.row_states
            self.history = [
                (i, states[r]) for i, r in enumerate(rows.tolist()) if states[r].params.has_penalties
            ]

    def _record_outputs(self, out: SchedulerOutput) -> None:
        """Keep the output tokens the step's inputs reveal, for the entries whose sampling reads them."""
        starts = np.asarray(out.num_computed_tokens, dtype=np.int64)
        ends = starts + np.asarray(out.num_new_tokens, dtype=np.int64)
        first = np.maximum(starts, self.prompt_lens)  # each entry's first output position among its inputs
        counts = np.maximum(ends - first, 0)
        offsets = np.cumsum(counts) - counts  # where each entry's output tokens start in the flat list
        tokens = out.output_token_ids
        for i, state in self.history:
            k, n = int(offsets[i]), int(counts[i])
            if n:
                _write_outputs(state, int(first[i] - self.prompt_lens[i]), tokens[k : k + n])

    def _take_row(self, state: CachedSequence) -> int:
        if not self._free_rows:
            self._grow()
        row = state.row = self._free_rows.pop()
        self.row_of[state.seq_id] = row
        self.row_states[row] = state
        self.prompt_len[row] = len(state.prompt_token_ids)
        p = state.row_params
        self.temperature[row] = p.temperature
        self.seed[row] = state.sampling_seed
        self.processed[row] = p.always_processed
        self.min_tokens[row] = p.min_tokens
        self.num_logprobs[row] = p.num_logprobs
        return row

    def _release_row(self, state: CachedSequence) -> None:
        if state.row >= 0:
            self.row_states[state.row] = None
            self._free_rows.append(state.row)
            del self.row_of[state.seq_id]
            state.row = -1

    def _grow(self) -> None:
        """Double the rows (every column, the block table and the device's last tokens)."""
        old = self.num_rows
        new = 2 * old
        for name in ("prompt_len", "temperature", "seed", "processed", "min_tokens", "num_logprobs"):
            column = getattr(self, name)
            grown = np.zeros(new, dtype=column.dtype)
            grown[:old] = column
            setattr(self, name, grown)
        self.num_logprobs[old:] = -1
        self.block_table.grow_rows(new)
        if self.sliding_table is not None:
            self.sliding_table.grow_rows(new)
        self.row_states += [None] * old
        last = torch.zeros(new, dtype=torch.int64, device=self.device)
        last[:old] = self.last_token
        self.last_token = last
        self._free_rows = list(range(new - 1, old - 1, -1))


def _write_outputs(state: CachedSequence, first: int, tokens: list[int]) -> None:
    """Record output tokens [first, first + len(tokens)) of `state`."""
    outputs = state.output_token_ids
    if len(outputs) < first:
        raise RuntimeError(
            f"sequence {state.seq_id}: output tokens from index {first} arrived, but the runner holds only "
            f"{len(outputs)} (a step was lost)"
        )
    del outputs[first:]
    outputs += tokens
