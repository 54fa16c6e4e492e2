"""vLLM's prompt truncation, which its clients send to fit long prompts: `truncate_prompt_tokens` keeps that
many of a prompt's tokens (-1: as many as the model's context holds), the last ones by default
(`truncation_side` "left" drops the start) or the first ones ("right" drops the end).

A text prompt is still tokenized under the tokenizer's own ceiling (the model's context), so truncation
shortens prompts up to that length; token-id prompts of any accepted length are cut."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.api.validation import opt_int, opt_str
from router.errors import bad_request

FIELDS = frozenset({"truncate_prompt_tokens", "truncation_side"})
SIDES = ("left", "right")


@dataclass(frozen=True, slots=True)
class Truncation:
    keep: int  # tokens kept; -1: the model's context
    side: str  # "left": the last `keep` tokens stay; "right": the first ones

    def apply(self, ids: Sequence[int], max_model_len: int) -> Sequence[int]:
        keep = max_model_len if self.keep == -1 else self.keep
        if keep > max_model_len:
            raise bad_request(
                f"'truncate_prompt_tokens' ({keep}) is greater than the model's context ({max_model_len}).",
                "truncate_prompt_tokens",
            )
        if len(ids) <= keep:
            return ids
        return ids[len(ids) - keep :] if self.side == "left" else ids[:keep]


def parse(body: dict) -> Truncation | None:
    keep = opt_int(body, "truncate_prompt_tokens", lo=-1)
    side = opt_str(body, "truncation_side")
    if side is not None and side not in SIDES:
        raise bad_request(f"'truncation_side' must be one of {list(SIDES)}, got {side!r}.", "truncation_side")
    if keep is None:
        return None
    if keep == 0:
        raise bad_request(
            "'truncate_prompt_tokens' must be -1 (the model's context) or at least 1.",
            "truncate_prompt_tokens",
        )
    return Truncation(keep, side or "left")
