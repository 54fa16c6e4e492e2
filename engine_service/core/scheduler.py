"""The scheduler: each step gives every running sequence a number of tokens within one token budget.

There is no prefill phase and no decode phase. A sequence has `num_computed_tokens` of `num_tokens`;
each step it catches up by as many tokens as the budget allows (a prompt may take several steps: chunked
prefill), and when it has caught up a new token is sampled for it.

schedule() commits the step at once: computed counts advance, and every sequence that samples gets a
PLACEHOLDER output token. update_from_output() later puts the real token in its place and checks stops.
So the engine may schedule step n+1 before step n's tokens reach the host (async scheduling): step n+1
feeds the placeholder, whose value the model runner takes from step n's sampled tokens on the device.

    output_token_ids:  [t0 t1 t2 | P(step n) P(step n+1)]      num_pending = 2
                        resolved   sampled, not yet known

Running sequences are served first, oldest first; when KV blocks run out, the newest running sequence is
preempted (its blocks are freed, and it is recomputed later, mostly from the prefix cache). Waiting
sequences are admitted in arrival order while the budget, `max_num_seqs` and the free blocks allow. For a
hybrid model (Gemma 2/3) "free blocks" means in both KV-cache groups: the block manager's can_allocate asks
its sliding-window group too, which counts what the sequence's window leaves behind as free.

The step's SchedulerOutput says what changed since the previous one (scheduler_output.py): sequences
scheduled for the first time whole, the others as new blocks, resumed or preempted, and the ids of those
that finished meanwhile; so the model runner keeps one persistent batch instead of rebuilding it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from engine_service.core.block_manager import BlockManager
from engine_service.core.scheduler_output import NewSequenceData, ScheduledSequence, SchedulerOutput
from engine_service.core.sequence import PLACEHOLDER, Sequence, SequenceStatus

__all__ = ["NewSequenceData", "ScheduledSequence", "Scheduler", "SchedulerOutput"]


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_with_penalties = 0  # unfinished sequences whose sampling reads their output tokens
        # What the next step's output reports (see _report_changes):
        self._finished_ids: list[str] = []  # scheduled sequences that finished or were aborted since
        self._batch_changed = True  # a sequence left since the last step
        self._last_full = False  # the last step's batch was every running sequence, each sampling

    # ---- requests in and out -------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        p = seq.params
        # What update_from_output checks each new token against, worked out once (see _stop_reason).
        seq.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.eos_token_ids)
        limit = self.max_model_len - seq.num_prompt_tokens
        seq.max_output_tokens = limit if p.max_tokens is None else min(p.max_tokens, limit)
        self.waiting.append(seq)
        self.num_with_penalties += seq.params.has_penalties

    def abort(self, seqs: Iterable[Sequence]) -> None:
        for seq in seqs:
            if seq.is_finished:
                continue
            if seq.status is SequenceStatus.RUNNING:
                self.running.remove(seq)
            else:
                self.waiting.remove(seq)
            self._finish(seq, "abort")

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        bs = bm.block_size
        # The batch's columns (see SchedulerOutput), appended to once per scheduled sequence.
        add_seq, add_id = out.seqs.append, out.seq_ids.append
        add_start, add_new = out.num_computed_tokens.append, out.num_new_tokens.append
        tokens = out.output_token_ids
        add_token = tokens.append
        new_block_ids = out.new_block_ids

        # 1. Running sequences, oldest first. Preempt from the newest end when blocks run out: the victims
        # are popped off the list's end, so the iteration never reaches them.
        for seq in self.running:  # hot: once per running sequence per step
            if budget <= 0:
                break
            outputs = seq.output_token_ids
            num_prompt = seq.num_prompt_tokens
            num_tokens = num_prompt + len(outputs)
            # The last token may be the final one, in flight: nothing to compute.
            if seq.num_pending > 0 and len(outputs) >= seq.max_output_tokens:
                continue
            start = seq.num_computed_tokens
            num_new = num_tokens - start if num_tokens - start < budget else budget
            # A decode token that lands inside the sequence's last block without filling it needs no block
            # and completes none: the block manager has nothing to do (see BlockManager.allocate).
            if not (num_new == 1 and 0 < start % bs < bs - 1):
                if not self._make_room(seq, num_new, out):
                    break  # `seq` itself was preempted: nothing behind it is left
                blocks = bm.allocate(seq, num_new)
                if blocks:
                    new_block_ids[seq.seq_id] = blocks
            seq.num_computed_tokens = start + num_new
            budget -= num_new
            if start < num_prompt:  # a chunk of its prompt
                out.num_prompt_tokens += min(start + num_new, num_prompt) - start
            if num_new == 1 and start >= num_prompt:  # a decode: its input is its newest output token
                add_token(outputs[start - num_prompt])
            else:
                _add_output_tokens(tokens, seq, start, num_new)
            add_seq(seq)
            add_id(seq.seq_id)
            add_start(start)
            add_new(num_new)
            if start + num_new == num_tokens:  # it samples: its placeholder, at once (the block manager
                outputs.append(PLACEHOLDER)  # only counts resolved tokens)
                seq.num_pending += 1
            else:
                out.partial.append(len(out.seqs) - 1)

        # 2. Waiting sequences, in arrival order, unless this step had to preempt.
        admitted = False
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            # A prompt that needs the logits or hidden state of every position skips the prefix cache
            # until its first token: a cached block has no logits (core/prompt_logprobs.py).
            every = seq.reads_every_position and not seq.output_token_ids
            hits = [] if every else bm.get_computed_blocks(seq)
            num_computed = len(hits) * bm.block_size
            num_new = min(seq.num_tokens - num_computed, budget)
            if not bm.can_allocate(seq, num_new, hits):
                break
            out.num_prompt_tokens += max(0, min(num_computed + num_new, seq.num_prompt_tokens) - num_computed)
            self.waiting.popleft()
            first_time = seq.num_cached_tokens < 0
            if first_time:  # count the prefix-cache lookup
                seq.num_cached_tokens = num_computed
                seq.first_scheduled_time = time.monotonic()
                bm.record_lookup(seq.num_prompt_tokens, num_computed)
            samples = num_computed + num_new == seq.num_tokens
            bm.allocate(seq, num_new, hits)
            table = list(bm.block_table(seq))  # a copy: the block manager appends to its own
            if first_time:
                out.new_seqs.append(
                    NewSequenceData(seq.seq_id, seq.index, seq.prompt_token_ids, seq.params, table)
                )
            else:  # back from a preemption: its new table replaces the old one
                out.resumed_seq_ids.append(seq.seq_id)
                new_block_ids[seq.seq_id] = table
            _add_output_tokens(tokens, seq, num_computed, num_new)
            add_seq(seq)
            add_id(seq.seq_id)
            add_start(num_computed)
            add_new(num_new)
            seq.num_computed_tokens += num_new
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted = True
            budget -= num_new
            if samples:
                seq.output_token_ids.append(PLACEHOLDER)
                seq.num_pending += 1
            else:
                out.partial.append(len(out.seqs) - 1)
        if bm.sliding is not None:  # a hybrid model: its sliding group's tables changed too
            out.sliding_block_changes = bm.sliding.take_changes()
        self._report_changes(out, admitted)
        return out

    def _report_changes(self, out: SchedulerOutput, admitted: bool) -> None:
        """Set what the step's output says changed since the previous step.

        A step is `full` when its batch is every running sequence and each one samples. Two full steps with
        no sequence admitted, preempted, finished or aborted between them have the same batch, in the same
        order (the running list's): `same_batch`, which the runner and the engine key their reuse on.
        """
        full = not out.partial and len(out.seqs) == len(self.running)
        changed = self._batch_changed or admitted or bool(out.preempted)
        out.same_batch = full and self._last_full and not changed
        self._last_full = full and bool(out.seqs)
        self._batch_changed = False
        if out.seqs:  # an empty step is not launched: its news wait for the next one
            out.finished_seq_ids, self._finished_ids = self._finished_ids, []

    def _make_room(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Preempt running sequences, newest first, until `seq` can get `num_new` more tokens' blocks.
        False when `seq` itself had to go."""
        while not self.block_manager.can_allocate(seq, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            out.preempted_seq_ids.append(victim.seq_id)
            if victim is seq:
                return False
        return True

    def update_from_output(self, seqs: list[Sequence], tokens: list[int]) -> list[Sequence]:
        """Resolve a step's placeholders with its sampled tokens and finish sequences that hit a stop.

        `seqs`: the sequences that sampled in that step, in order; `tokens[i]`: the token of seqs[i].
        Returns the sequences that finished. One that finished or was aborted meanwhile ignores its token.
        """
        finished: list[Sequence] = []
        bm = self.block_manager
        bs = bm.block_size
        FINISHED = SequenceStatus.FINISHED  # a local: an enum member lookup costs ~60 ns
        for seq, token in zip(seqs, tokens, strict=True):  # hot: once per sampled token
            if seq.status is FINISHED:
                continue
            num_pending = seq.num_pending
            index = len(seq.output_token_ids) - num_pending  # the oldest placeholder is this step's
            seq.output_token_ids[index] = token
            seq.num_pending = num_pending - 1
            num_output = index + 1
            # A structured-output sequence's grammar takes its tokens in order; its end is a stop.
            complete = seq.grammar is not None and seq.grammar.accept(token)
            if complete or token in seq.stop_ids or num_output >= seq.max_output_tokens:  # look closer
                reason = self._stop_reason(seq, token, num_output) or ("stop" if complete else None)
                if reason is not None:
                    del seq.output_token_ids[num_output:]  # a newer step's placeholder, if any, is void
                    seq.num_pending = 0
                    (self.running if seq.status is SequenceStatus.RUNNING else self.waiting).remove(seq)
                    self._finish(seq, reason)
                    finished.append(seq)
                    continue
            if (seq.num_prompt_tokens + num_output) % bs == 0:  # it completes a block: key it, if computed
                bm.register_computed(seq)
        return finished

    # ---- internals -----------------------------------------------------------------------------
    def _stop_reason(self, seq: Sequence, token: int, num_output: int) -> str | None:
        """Why the sequence ends with its `num_output`-th output token `token`, if it does."""
        p = seq.params
        # The sampler masks EOS and stop ids until min_tokens tokens exist, so a stop token can only
        # come after them.
        is_stop_token = (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids
        if is_stop_token and num_output > p.min_tokens:
            seq.stop_reason = token
            return "stop"
        if p.max_tokens is not None and num_output >= p.max_tokens:
            return "length"
        if seq.num_prompt_tokens + num_output >= self.max_model_len:
            return "length"
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.num_cached_tokens >= 0:  # it was scheduled: the runner keeps it until told
            self._finished_ids.append(seq.seq_id)
        self._batch_changed = True
        self.num_with_penalties -= seq.params.has_penalties
        self.block_manager.free(seq)


def _add_output_tokens(tokens: list[int], seq: Sequence, start: int, num_new: int) -> None:
    """Append the output tokens among `seq`'s inputs [start, start + num_new) (the runner has the prompt)."""
    num_prompt = seq.num_prompt_tokens
    first = start if start > num_prompt else num_prompt
    end = start + num_new
    if end > first:
        tokens += seq.output_token_ids[first - num_prompt : end - num_prompt]
