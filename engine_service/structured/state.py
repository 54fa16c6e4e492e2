"""One sequence's grammar: an xgrammar matcher fed the sequence's resolved output tokens, in order.

The scheduler calls `accept` for each token as it resolves (update_from_output), so after step n is
collected the matcher has taken every output token before step n+1's draw, and `fill` writes the mask of
that draw. Preemption recomputes KV, never output tokens, so it changes nothing here. Should the matcher
ever disagree with the sequence (it has taken a different number of tokens than the draw's position),
`catch_up` rebuilds it from the output tokens: the state is a function of those tokens alone.

Reasoning models: with a ReasoningGate the first tokens are free; the matcher starts with the token after
the gate's end marker (e.g. "</think>"), as vLLM's reasoning-aware structured output does.
"""

from __future__ import annotations

import logging

import torch
import xgrammar as xgr

log = logging.getLogger(__name__)

# How far back in the prompt a reasoning marker counts: the template's own generation prompt
# ("<think>\n" to think, "<think>\n\n</think>\n\n" not to) ends the prompt; older turns are further back.
PROMPT_MARKER_WINDOW = 16


class ReasoningGate:
    """Whether the output's reasoning has ended: its token ids have ended with `end_ids`."""

    def __init__(self, end_ids: list[int], ended: bool):
        self.end_ids = end_ids
        self.ended = ended
        self._tail: list[int] = []

    @classmethod
    def for_prompt(cls, prompt: list[int], start_ids: list[int], end_ids: list[int]) -> ReasoningGate:
        """Ended already when the prompt's tail closes the reasoning (a template that turned thinking off)."""
        tail = prompt[-PROMPT_MARKER_WINDOW:]
        last_end = _last_index(tail, end_ids)
        last_start = _last_index(tail, start_ids) if start_ids else -1
        return cls(end_ids, ended=last_end >= 0 and last_end > last_start)

    def feed(self, token: int) -> None:
        self._tail.append(token)
        del self._tail[: -len(self.end_ids)]
        if self._tail == self.end_ids:
            self.ended = True

    def reset(self, ended: bool) -> None:
        self.ended, self._tail = ended, []


class GrammarState:
    """Implements core.sequence.GrammarTracker for the scheduler."""

    def __init__(self, compiled: xgr.CompiledGrammar, gate: ReasoningGate | None = None):
        self.matcher = xgr.GrammarMatcher(compiled)
        self.gate = gate
        self._gate_ended_at_start = gate.ended if gate is not None else True
        self.num_seen = 0  # output tokens taken, free reasoning tokens included
        self.complete = False  # the grammar ended (or was broken): the sequence stops

    @property
    def constrains_next(self) -> bool:
        """Whether the next draw is masked."""
        return not self.complete and (self.gate is None or self.gate.ended)

    def accept(self, token: int) -> bool:
        self.num_seen += 1
        if self.complete:
            return True
        if self.gate is not None and not self.gate.ended:
            self.gate.feed(token)
            return False
        if not self.matcher.accept_token(token):
            # The mask allowed only what the matcher takes, so this is a token the mask could not hold
            # back (a min_tokens ban of the only allowed token): end the sequence rather than let it run free.
            log.warning("token %d does not fit the grammar: the sequence ends here", token)
            self.complete = True
        elif self.matcher.is_terminated():
            self.complete = True
        return self.complete

    def catch_up(self, output_token_ids: list[int], position: int) -> None:
        """Make the matcher hold exactly output_token_ids[:position] (see the module's docstring)."""
        if self.num_seen == position:
            return
        log.warning(
            "grammar state out of step (%d tokens taken, draw at %d): rebuilt", self.num_seen, position
        )
        self.matcher.reset()
        if self.gate is not None:
            self.gate.reset(self._gate_ended_at_start)
        self.num_seen, self.complete = 0, False
        for token in output_token_ids[:position]:
            if token < 0:
                raise RuntimeError("a grammar mask was asked for before the tokens it depends on were known")
            self.accept(token)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)


def _last_index(ids: list[int], pattern: list[int]) -> int:
    """Where the last occurrence of `pattern` in `ids` ends (its last token's index), or -1."""
    n = len(pattern)
    for end in range(len(ids), n - 1, -1):
        if ids[end - n : end] == pattern:
            return end - 1
    return -1
