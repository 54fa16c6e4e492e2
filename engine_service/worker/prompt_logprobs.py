"""Prompt logprobs on the device: which rows of a step's flat batch score prompt tokens, and their scores.

The model runner computes logits only for the rows that sample. A sequence that asked for prompt
logprobs (sample 0 of its request) also needs the rows of its prompt chunk: for a chunk [start, end) of a
prompt of P tokens, the rows of positions start .. min(end, P - 1) - 1, which score the prompt tokens one
ahead of them (see engine_service/core/prompt_logprobs.py for the picture). Those rows go through the LM
head in slices of MAX_ROWS (a [rows, vocab] float32 block each), and what leaves the device is small: per
row the prompt token's logprob and rank, and the top-k alternatives. The host copy waits for `result()`,
which the engine calls when it collects the step, so a step with prompt logprobs queues like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine_service.core.prompt_logprobs import PromptLogprobsChunk, wants_prompt_logprobs
from engine_service.core.scheduler_output import ScheduledSequence
from engine_service.worker import host_copy

MAX_ROWS = 256  # rows through the LM head at once: [256, vocab] float32 logits is 128 MiB at 128k tokens


@dataclass(frozen=True, slots=True)
class _Span:
    item: int  # index among the step's scheduled sequences
    row: int  # the flat row of its first scored position
    first: int  # prompt index of the first token scored
    targets: list[int]  # the prompt tokens scored, one per row
    k: int  # top alternatives wanted


def find_spans(scheduled: list[ScheduledSequence], query_start: list[int]) -> list[_Span]:
    """The scored rows of the step (`scheduled`: its entries, over the runner's kept sequences,
    InputBatch.scheduled): `query_start[i]` is the flat row of scheduled sequence i's first token.

    Only a step with a prompt chunk can have any (a step of one sampled token per sequence has none), so
    the caller skips the scan for steady decode steps."""
    spans = []
    for i, item in enumerate(scheduled):
        seq = item.seq
        k = seq.params.prompt_logprobs
        if not wants_prompt_logprobs(seq.index, k):
            continue
        end = min(item.start + item.num_new_tokens, seq.num_prompt_tokens - 1)
        if item.start < end:
            targets = seq.prompt_token_ids[item.start + 1 : end + 1]
            spans.append(_Span(i, query_start[i], item.start + 1, targets, k))
    return spans


class PendingPromptLogprobs:
    """Scores queued on the device; `result()` brings them to the host as one chunk per span."""

    def __init__(self, spans: list[_Span], logprobs, ranks, top_logprobs, top_ids):
        self._spans = spans
        self._tensors = (logprobs, ranks, top_logprobs, top_ids)

    def result(self) -> list[PromptLogprobsChunk]:
        logprobs, ranks, top_logprobs, top_ids = (t.tolist() for t in self._tensors)
        chunks, row = [], 0
        for s in self._spans:
            n = len(s.targets)
            rows = slice(row, row + n)
            chunks.append(
                PromptLogprobsChunk(
                    s.item,
                    s.first,
                    s.targets,
                    logprobs[rows],
                    ranks[rows],
                    [ids[: s.k] for ids in top_ids[rows]],
                    [lps[: s.k] for lps in top_logprobs[rows]],
                )
            )
            row += n
        return chunks


def launch(model, hidden: torch.Tensor, spans: list[_Span]) -> PendingPromptLogprobs:
    """Scores every span's rows of `hidden` ([T, hidden], the step's flat batch) on the device."""
    rows, targets = host_copy.int64_parts(  # [R] each: the flat rows and the prompt tokens they score
        [[s.row + j for s in spans for j in range(len(s.targets))], [t for s in spans for t in s.targets]],
        hidden.device,
    )
    k = max(s.k for s in spans)
    parts = []
    for lo in range(0, len(rows), MAX_ROWS):
        logits = model.compute_logits(hidden[rows[lo : lo + MAX_ROWS]])  # [r, vocab]
        logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        chosen = logprobs.gather(-1, targets[lo : lo + MAX_ROWS, None])  # [r, 1]
        rank = (logprobs > chosen).sum(-1) + 1  # [r]: 1 + the tokens strictly more likely
        top = logprobs.topk(k, dim=-1) if k else None
        parts.append(
            (
                chosen[:, 0],
                rank,
                top.values if top else logprobs.new_empty(len(chosen), 0),
                top.indices if top else rank.new_empty(len(chosen), 0),
            )
        )
    return PendingPromptLogprobs(spans, *(torch.cat(column) for column in zip(*parts, strict=True)))
