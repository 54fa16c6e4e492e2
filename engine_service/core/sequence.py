"""A Sequence: one sample of one request as the scheduler and model runner see it."""

from __future__ import annotations

import enum
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from engine_service.core.sampling_params import SamplingParams


class GrammarTracker(Protocol):
    """What the scheduler sees of a sequence's grammar: it takes each resolved output token in order."""

    def accept(self, token: int) -> bool:
        """Feed the next output token; True when the output is complete (the sequence stops: "stop")."""
        ...


# Stands for a token sampled by a step whose result has not reached the host yet (see Scheduler).
PLACEHOLDER = -1


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(eq=False)
class Sequence:
    """One sample stream: `n > 1` requests become n sequences with the same prompt.

    Tokens are prompt + output. `num_computed_tokens` counts the tokens whose KV is in the cache; each step
    the scheduler gives the sequence some of the rest. There is no prefill or decode phase: a sequence whose
    computed count reaches its token count gets a new token sampled.
    """

    seq_id: str  # unique in the engine: f"{request_id}#{index}"
    request_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    # Its prompt's every position is computed (prompt logprobs, mean pooling): it skips the prefix cache
    # until its first token (see core/prompt_logprobs.py).
    reads_every_position: bool = False
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens found in the prefix cache at first scheduling (-1: not yet)
    sampling_seed: int | None = None  # its noise seed when sampled directly (Sampler.__call__)
    num_pending: int = 0  # trailing output tokens that are PLACEHOLDERs, sampled but not yet resolved
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    num_prompt_tokens: int = field(init=False)  # the prompt never changes: read in every step's hot loops
    # Set by Scheduler.add from the params and the engine's limits: the ids that may stop it (EOS unless
    # ignored, stop_token_ids), and the output length at which it ends (max_tokens, or the context's end).
    stop_ids: frozenset[int] = field(init=False, default=frozenset())
    max_output_tokens: int = field(init=False, default=sys.maxsize)
    # A structured-output request's grammar state (engine_service/structured/state.py), set by the engine
    # before the sequence is scheduled; update_from_output feeds it every resolved token.
    grammar: GrammarTracker | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_resolved_tokens(self) -> int:
        return self.num_tokens - self.num_pending

    @property
    def resolved_output_ids(self) -> list[int]:
        return self.output_token_ids[: len(self.output_token_ids) - self.num_pending]

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output without building the whole list."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
