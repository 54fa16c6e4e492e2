"""A step's SequenceUpdates in a compact form: how the engine builds them, and how they cross the pipe
from the engine process to the gRPC front.

Nearly every update of a step is the same shape: one new token for sample 0 of a request, no logprobs,
not finished. Those are kept as columns (request ids, token ids, prompt and cached prompt tokens); the
rest (finishes, logprobs, prompt logprobs, n > 1) as SequenceUpdate objects. The engine appends to the
columns as it collects a step (`Engine.step_packed`), so the engine loop never builds an object per
token; the columns pickle compactly, and the front (or `Engine.step`, for callers in the same process)
rebuilds the objects.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from engine_service.core.outputs import SequenceUpdate


class PackedUpdates(NamedTuple):
    request_ids: list[str]  # the plain updates: one new token for sample 0, nothing else
    token_ids: array
    num_cached_tokens: array
    num_prompt_tokens: array
    other: list[SequenceUpdate]  # every other update, whole


class SteadyRows:
    """The columns of a step whose every update was plain, for later steps of the same batch (the scheduler
    says so: SchedulerOutput.same_batch): in a steady decode only the token ids change from step to step,
    so the rest is copied, not rebuilt row by row. The engine drops it when one of the sequences finishes
    or is aborted (its token would be void)."""

    def __init__(self, packed: PackedUpdates):
        self.request_ids = list(packed.request_ids)  # copies: the caller may extend what it was given
        self.num_cached_tokens = array("q", packed.num_cached_tokens)
        self.num_prompt_tokens = array("q", packed.num_prompt_tokens)

    def packed(self, token_ids: list[int]) -> PackedUpdates:
        cached, prompt = array("q", self.num_cached_tokens), array("q", self.num_prompt_tokens)
        return PackedUpdates(list(self.request_ids), array("q", token_ids), cached, prompt, [])


def empty() -> PackedUpdates:
    return PackedUpdates([], array("q"), array("q"), array("q"), [])


def extend(packed: PackedUpdates, more: PackedUpdates) -> PackedUpdates:
    """`packed` with `more` appended (in place)."""
    for mine, theirs in zip(packed, more, strict=True):
        mine.extend(theirs)
    return packed


def pack(updates: list[SequenceUpdate]) -> PackedUpdates:
    """Updates built as objects, in this form. (Engine._collect builds the form directly, with the same
    rule for a plain update inlined in its per-token loop.)"""
    packed = empty()
    for u in updates:
        if (
            u.index == 0
            and u.finish_reason is None
            and u.new_logprobs is None
            and u.prompt_logprobs is None
            and len(u.new_token_ids) == 1
        ):
            packed.request_ids.append(u.request_id)
            packed.token_ids.append(u.new_token_ids[0])
            packed.num_cached_tokens.append(u.num_cached_tokens)
            packed.num_prompt_tokens.append(u.num_prompt_tokens)
        else:
            packed.other.append(u)
    return packed


def unpack(packed: PackedUpdates) -> list[SequenceUpdate]:
    """The updates again; the plain ones first (a request has at most one update per step)."""
    columns = (packed.request_ids, packed.token_ids, packed.num_prompt_tokens, packed.num_cached_tokens)
    updates = [
        SequenceUpdate(request_id, 0, [token], None, None, None, prompt, cached)
        for request_id, token, prompt, cached in zip(*columns, strict=True)
    ]
    return updates + packed.other
