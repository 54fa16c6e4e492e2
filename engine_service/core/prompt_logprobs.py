"""Prompt logprobs, carried from the steps that compute them to the sample's first update (pure Python).

A request with `prompt_logprobs` set gets, for each prompt token after the first, its logprob given the
tokens before it (and the top alternatives). The logits at position p score token p + 1, so the last
prompt position's logits are the sampler's (the first output token), never a prompt logprob:

    prompt        t0   t1   t2   t3   t4        P = 5
    logits at p    0    1    2    3    4
    score        t1   t2   t3   t4   (first output token: sampled)

A chunk [start, end) of the prompt scores positions start .. min(end, P - 1) - 1, i.e. tokens start + 1 ..
min(end, P - 1). The model runner computes them (engine_service/worker/prompt_logprobs.py) and hands them
back with the step's tokens as `PromptLogprobsChunk`s; the engine gathers them here per sequence and puts
the whole list on the sequence's first update, which always comes from the step of the prompt's last
chunk, after every earlier chunk.

Every position must be computed, so such a prompt skips the prefix cache until its first token
(`Sequence.reads_every_position`, Scheduler.schedule): a cached block holds KV, not logits, and its
positions would have to be recomputed anyway. vLLM makes the same choice. Only sample 0 of a request
computes them; its other samples use the cache as usual. A prompt preempted before its first token
starts over: its repeated positions are dropped here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine_service.core.outputs import TokenLogprobs


@dataclass(frozen=True, slots=True)
class PromptLogprobsChunk:
    """One scheduled sequence's scored prompt positions in one step (host lists, one entry per token)."""

    item: int  # the sequence's index among the step's scheduled sequences
    first: int  # the prompt index of the first token scored (the chunk's start + 1)
    token_ids: list[int]  # the prompt tokens scored
    logprobs: list[float]
    ranks: list[int]  # 1-based rank of each prompt token at its position
    top_ids: list[list[int]]  # the top alternatives per position, best first
    top_logprobs: list[list[float]]


def wants_prompt_logprobs(index: int, prompt_logprobs: int | None) -> bool:
    """Whether the sample with this index computes its request's prompt logprobs (sample 0 only)."""
    return prompt_logprobs is not None and index == 0


class PromptLogprobsAccumulator:
    """The prompt logprobs received so far, per sequence, until its first update takes them."""

    def __init__(self) -> None:
        self._by_seq: dict[str, list[TokenLogprobs]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_seq)

    def add(self, seq_ids: Sequence[str], chunks: Iterable[PromptLogprobsChunk]) -> None:
        """`seq_ids[c.item]` names the sequence of chunk c (the step's scheduled sequences, in order)."""
        for c in chunks:
            got = self._by_seq.setdefault(seq_ids[c.item], [])
            skip = len(got) + 1 - c.first  # positions already received (a preempted prompt recomputes)
            if skip < 0:
                raise RuntimeError(
                    f"prompt logprobs of {seq_ids[c.item]} from token {c.first} arrived, "
                    f"but only tokens 1..{len(got)} came before (a chunk was lost)"
                )
            for j in range(skip, len(c.token_ids)):
                top = list(zip(c.top_ids[j], c.top_logprobs[j], strict=True))
                got.append(TokenLogprobs(c.token_ids[j], c.logprobs[j], top, c.ranks[j]))

    def pop(self, seq_id: str) -> list[TokenLogprobs]:
        """Everything received for the sequence (empty for a one-token prompt), forgotten here."""
        return self._by_seq.pop(seq_id, [])

    def forget(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            self._by_seq.pop(seq_id, None)
