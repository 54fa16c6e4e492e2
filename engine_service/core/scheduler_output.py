"""What one scheduler step hands the model runner: the batch in order, and what changed since the last step.

As in vLLM v1, a sequence is sent whole only the first time it is scheduled (`new_seqs`: prompt, params,
block table); the runner keeps it from then on, in its persistent batch, until a later step lists it as
finished. Every other step carries it as a diff:

    the batch          seq_ids[i], num_computed_tokens[i] (its first position this step), num_new_tokens[i],
                       and the output tokens among its inputs (flat, in batch order; the prompt's the runner
                       holds). A PLACEHOLDER stands for the previous step's sample, still on the device.
    new_block_ids      blocks appended to a sequence's table; a resumed sequence's whole new table
    resumed_seq_ids    back from a preemption: it rejoins the batch with a new table
    preempted_seq_ids  left the batch this step (their blocks were freed; the runner keeps their state)
    finished_seq_ids   finished or aborted since the last step: the runner drops them
    sliding_block_changes   a hybrid model's sliding-window group (core/sliding_blocks.py): per sequence
                       whose table there changed, (its leading null entries, the ids appended); a new or
                       resumed sequence's whole table
    same_batch         the same sequences as the previous step, in the same order, each one sampling in
                       both: a steady decode, where only positions, tokens and a few blocks moved

`seqs` and `preempted` are the driver's own Sequence objects; they never cross to tensor-parallel workers
(see `__reduce__`: the step message is this object without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine_service.core.sampling_params import SamplingParams
from engine_service.core.sequence import Sequence


@dataclass(slots=True)
class NewSequenceData:
    """A sequence scheduled for the first time: everything the runner keeps of it while it lives."""

    seq_id: str
    index: int  # its sample's index within the request (n > 1 samples draw apart)
    prompt_token_ids: list[int]
    params: SamplingParams
    block_ids: list[int]  # its block table so far (prefix-cache hits first)


@dataclass(slots=True)
class ScheduledSequence:
    """One batch entry as a view (tests and tools; the step itself is kept as columns)."""

    seq: Sequence
    num_new_tokens: int
    start: int  # num_computed_tokens before this step (positions start..start+num_new_tokens-1)
    samples: bool  # this step brings the sequence up to date, so a token is sampled for it


@dataclass
class SchedulerOutput:
    # ---- the batch, in order: the tokens of the sequences that sample come back in this order ----
    seq_ids: list[str] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)  # flat: each entry's output tokens in order
    partial: list[int] = field(default_factory=list)  # entries that stop short of their last token: no sample
    # ---- what changed since the previous step ----
    new_seqs: list[NewSequenceData] = field(default_factory=list)
    resumed_seq_ids: list[str] = field(default_factory=list)
    new_block_ids: dict[str, list[int]] = field(default_factory=dict)
    preempted_seq_ids: list[str] = field(default_factory=list)
    finished_seq_ids: list[str] = field(default_factory=list)
    same_batch: bool = False
    sliding_block_changes: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    # ---- the driver's own (never sent to workers) ----
    seqs: list[Sequence] = field(default_factory=list)  # the batch's sequences
    preempted: list[Sequence] = field(default_factory=list)
    num_prompt_tokens: int = 0  # of the scheduled tokens, those of prompts (the rest are output tokens)

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.seq_ids

    def sampled_seqs(self) -> list[Sequence]:
        """The batch's sequences that sample this step, in order (the order of the sampled tokens)."""
        if not self.partial:
            return self.seqs
        skip = set(self.partial)
        return [seq for i, seq in enumerate(self.seqs) if i not in skip]

    @property
    def scheduled(self) -> list[ScheduledSequence]:
        skip = set(self.partial)
        columns = zip(self.seqs, self.num_new_tokens, self.num_computed_tokens, strict=True)
        return [ScheduledSequence(seq, n, start, i not in skip) for i, (seq, n, start) in enumerate(columns)]

    def __reduce__(self):
        """The step message to tensor-parallel workers: the runner's fields only (no Sequence objects)."""
        return _for_runner, (
            self.seq_ids,
            self.num_computed_tokens,
            self.num_new_tokens,
            self.output_token_ids,
            self.partial,
            self.new_seqs,
            self.resumed_seq_ids,
            self.new_block_ids,
            self.preempted_seq_ids,
            self.finished_seq_ids,
            self.same_batch,
            self.sliding_block_changes,
        )


def _for_runner(*fields) -> SchedulerOutput:
    return SchedulerOutput(*fields)
