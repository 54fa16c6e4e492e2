"""One step as the driver sends it to every tensor-parallel worker: plain tuples, new data only.

The workers keep a mirror of each sequence they have seen (its prompt, its sampling params, the tokens
sent so far, its block table), so a step carries only what changed since the last one:

    new        (handle, index, prompt token ids, SamplingParams)  once, the first time a sequence is scheduled
    forgotten  handles of sequences that finished or were aborted since the last step
    items      (handle, start, token ids [start, start + n), samples, blocks kept, new block ids)
               one per scheduled sequence, in the scheduler's order

A decode step of B sequences is B short tuples. A sequence is known by a small integer handle, not by its
seq_id. Its block table only grows while it runs (BlockManager appends); after a preemption it starts
over, so the driver sends it whole again ("blocks kept" = 0).

Every output token a sample needs (penalties, min_tokens) reaches the workers as an input token before
that sample: the token sampled at position p is the input at position p of a later step. A prefix-cache
hit can skip only tokens a worker has already seen (the prompt, or output tokens computed before a
preemption), so the mirror is exact whenever a sequence samples. With async scheduling the newest input
may be a PLACEHOLDER, filled on each rank's device; the engine turns async off while any sequence has
penalties, so a history the sampler reads holds no placeholder.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import ScheduledSequence, SchedulerOutput
from engine_service.core.sequence import Sequence
from engine_service.worker.token_bitmask import TokenBitmask

NewSequence = tuple[int, int, list[int], SamplingParams]  # handle, index, prompt token ids, params
Item = tuple[int, int, list[int], bool, int, list[int]]  # handle, start, tokens, samples, kept, new blocks


@dataclass(frozen=True, slots=True)
class StepMessage:
    new: list[NewSequence]
    forgotten: list[int]
    items: list[Item]
    bitmask: TokenBitmask | None = None  # the grammar masks of the step's structured-output draws


class StepEncoder:
    """The driver's side: SchedulerOutput + block tables -> StepMessage, remembering what workers hold."""

    def __init__(self) -> None:
        self._handles: dict[str, int] = {}  # seq_id -> handle
        # handle -> (the block manager's table list as last sent, its length and last block then)
        self._sent_tables: dict[int, tuple[list[int], int, int]] = {}
        self._forgotten: list[int] = []
        self._counter = itertools.count()

    @property
    def num_known(self) -> int:
        return len(self._handles)

    def forget(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            handle = self._handles.pop(seq_id, None)
            if handle is not None:
                self._sent_tables.pop(handle, None)
                self._forgotten.append(handle)

    def encode(self, out: SchedulerOutput, block_tables: list[list[int]]) -> StepMessage:
        for seq in out.preempted:  # its blocks were freed: the next table it gets is sent whole
            handle = self._handles.get(seq.seq_id)
            if handle is not None:
                self._sent_tables.pop(handle, None)
        new: list[NewSequence] = []
        items: list[Item] = []
        for scheduled, table in zip(out.scheduled, block_tables, strict=True):
            seq = scheduled.seq
            handle = self._handles.get(seq.seq_id)
            if handle is None:
                handle = self._handles[seq.seq_id] = next(self._counter)
                new.append((handle, seq.index, seq.prompt_token_ids, seq.params))
            kept = self._blocks_kept(handle, table)
            self._sent_tables[handle] = (table, len(table), table[-1] if table else -1)
            end = scheduled.start + scheduled.num_new_tokens
            tokens = seq.token_ids_slice(scheduled.start, end)
            items.append((handle, scheduled.start, tokens, scheduled.samples, kept, table[kept:]))
        forgotten, self._forgotten = self._forgotten, []
        return StepMessage(new, forgotten, items)

    def _blocks_kept(self, handle: int, table: list[int]) -> int:
        """How many leading blocks of `table` the workers already hold."""
        sent = self._sent_tables.get(handle)
        if sent is None:
            return 0
        sent_table, sent_len, sent_last = sent
        # The block manager appends to one live list per running sequence. Another list, a shorter one or
        # a changed last block means the table was rebuilt: it is sent whole.
        if sent_table is not table or len(table) < sent_len:
            return 0
        return sent_len if sent_len == 0 or table[sent_len - 1] == sent_last else 0


class SequenceMirror:
    """A worker's side: applies StepMessages and rebuilds the SchedulerOutput the ModelRunner takes."""

    def __init__(self) -> None:
        self.seqs: dict[int, Sequence] = {}
        self.tables: dict[int, list[int]] = {}

    def apply(self, msg: StepMessage) -> tuple[SchedulerOutput, list[list[int]], list[str]]:
        """Returns the step's SchedulerOutput, its block tables, and the seq_ids forgotten since the last."""
        forgotten = []
        for handle in msg.forgotten:
            seq = self.seqs.pop(handle, None)
            self.tables.pop(handle, None)
            if seq is not None:
                forgotten.append(seq.seq_id)
        for handle, index, prompt, params in msg.new:
            self.seqs[handle] = Sequence(str(handle), "", index, prompt, params)
            self.tables[handle] = []
        out = SchedulerOutput()
        scheduled, tables = out.scheduled, []
        seqs, all_tables = self.seqs, self.tables
        for handle, start, tokens, samples, kept, new_blocks in msg.items:  # hot: B items per step
            seq = seqs[handle]
            outputs = seq.output_token_ids
            if start - len(seq.prompt_token_ids) == len(outputs):  # decode: the tokens extend the output
                outputs += tokens
            else:
                _write_tokens(seq, start, tokens)
            table = all_tables[handle]
            if kept < len(table):  # rebuilt (preemption): a new list, as the block manager makes one
                table = all_tables[handle] = table[:kept]
            if new_blocks:
                table += new_blocks
            # `samples` is the driver's word: the mirror may not hold the newest token yet.
            scheduled.append(ScheduledSequence(seq, len(tokens), start, samples))
            tables.append(table)
        return out, tables, forgotten


def _write_tokens(seq: Sequence, start: int, tokens: list[int]) -> None:
    """Record tokens [start, start + len(tokens)) of `seq`: the prompt part is known, the rest is output."""
    num_prompt = seq.num_prompt_tokens
    end = start + len(tokens)
    if end <= num_prompt:
        return
    first = max(start, num_prompt)  # the first output position written
    out = seq.output_token_ids
    if len(out) < first - num_prompt:
        raise RuntimeError(
            f"sequence {seq.seq_id}: tokens from position {start} arrived, but the worker holds only "
            f"{num_prompt + len(out)} (a step message was lost)"
        )
    del out[first - num_prompt :]
    out += tokens[first - start :]
