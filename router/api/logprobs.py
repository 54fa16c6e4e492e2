"""Engine logprobs -> OpenAI's two logprob shapes (chat's per-token objects; completions' parallel lists)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pagoda.engine.v1 import engine_pb2

# JSON has no -inf: a token the model rules out gets a very small finite logprob instead.
_FLOOR = -9999.0


def _lp(value: float) -> float:
    return value if math.isfinite(value) else _FLOOR


def token_name(t: engine_pb2.TokenLogprob, as_ids: bool) -> str:
    """A token as logprobs name it: its text, or with vLLM's `return_tokens_as_token_ids` "token_id:N", which
    stays exact where a token's text alone is not (half of a multi-byte character, two ids of one text)."""
    return f"token_id:{t.token_id}" if as_ids else t.token


def _chat_token(t: engine_pb2.TokenLogprob, as_ids: bool) -> dict:
    name = token_name(t, as_ids)
    return {"token": name, "logprob": _lp(t.logprob), "bytes": list(name.encode())}


def chat_logprobs(positions: Iterable[engine_pb2.PositionLogprobs], as_ids: bool = False) -> list[dict]:
    """The items of a chat choice's `logprobs.content` (`as_ids`: tokens named "token_id:N", as vLLM)."""
    return [
        {**_chat_token(p.sampled, as_ids), "top_logprobs": [_chat_token(t, as_ids) for t in p.top]}
        for p in positions
    ]


class CompletionLogprobs:
    """A completion choice's `logprobs` lists, as OpenAI's legacy API gives them: `top_logprobs` holds the
    `num_top` most likely tokens and always the chosen one (so logprobs=0 gives the chosen token's alone);
    with echo, the prompt's tokens come first, the first of them with null logprob and top_logprobs (it
    has no context). `text_offset` counts characters from the choice's start, token text by token text.
    `as_ids` (vLLM's `return_tokens_as_token_ids`): tokens and top_logprobs keys are "token_id:N"; the
    offsets still count the tokens' text, so that they index `text`."""

    def __init__(self, num_top: int, offset: int = 0, as_ids: bool = False):
        self.num_top = num_top
        self.offset = offset
        self.as_ids = as_ids
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add_prompt(
        self, first_token: str, first_id: int, positions: Iterable[engine_pb2.PositionLogprobs]
    ) -> None:
        """The echoed prompt: its first token (text and id), then the engine's prompt logprobs (1..)."""
        first = engine_pb2.TokenLogprob(token_id=first_id, token=first_token)
        self._append(first, None, None)
        self.add(positions)

    def add(self, positions: Iterable[engine_pb2.PositionLogprobs]) -> None:
        for p in positions:
            top = {token_name(t, self.as_ids): _lp(t.logprob) for t in p.top[: self.num_top]}
            top.setdefault(token_name(p.sampled, self.as_ids), _lp(p.sampled.logprob))
            self._append(p.sampled, _lp(p.sampled.logprob), top)

    def _append(
        self, token: engine_pb2.TokenLogprob, logprob: float | None, top: dict[str, float] | None
    ) -> None:
        self.tokens.append(token_name(token, self.as_ids))
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self.offset)
        self.offset += len(token.token)

    def take(self) -> dict:
        """The lists gathered so far, then starts empty again at the same offset (for stream chunks)."""
        out = {
            "text_offset": self.text_offset,
            "token_logprobs": self.token_logprobs,
            "tokens": self.tokens,
            "top_logprobs": self.top_logprobs,
        }
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out


def vllm_prompt_logprobs(positions: Iterable[engine_pb2.PositionLogprobs], num_top: int) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: null for the first prompt token, then per token a map from token id to
    {logprob, rank, decoded_token} holding the prompt token and the `num_top` most likely ones."""
    out: list[dict | None] = [None]
    for p in positions:
        entry = {str(t.token_id): _vllm_entry(t, rank) for rank, t in enumerate(p.top[:num_top], 1)}
        entry.setdefault(str(p.sampled.token_id), _vllm_entry(p.sampled, p.sampled.rank))
        out.append(entry)
    return out


def _vllm_entry(t: engine_pb2.TokenLogprob, rank: int) -> dict:
    return {"logprob": _lp(t.logprob), "rank": rank, "decoded_token": t.token}


def cumulative_logprob(positions: Iterable[engine_pb2.PositionLogprobs]) -> float:
    """The sum of the chosen tokens' logprobs (best_of ranks samples by it)."""
    return sum(p.sampled.logprob for p in positions)
