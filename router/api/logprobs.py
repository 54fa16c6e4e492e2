"""Engine logprobs -> OpenAI's two logprob shapes (chat's per-token objects; completions' parallel lists)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pagoda.engine.v1 import engine_pb2

# JSON has no -inf: a token the model rules out gets a very small finite logprob instead.
_FLOOR = -9999.0


def _lp(value: float) -> float:
    return value if math.isfinite(value) else _FLOOR


def _chat_token(t: engine_pb2.TokenLogprob) -> dict:
    return {"token": t.token, "logprob": _lp(t.logprob), "bytes": list(t.token.encode())}


def chat_logprobs(positions: Iterable[engine_pb2.PositionLogprobs]) -> list[dict]:
    """The items of a chat choice's `logprobs.content`."""
    return [{**_chat_token(p.sampled), "top_logprobs": [_chat_token(t) for t in p.top]} for p in positions]


class CompletionLogprobs:
    """A completion choice's `logprobs` lists; `text_offset` counts characters from the choice's start."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, positions: Iterable[engine_pb2.PositionLogprobs]) -> None:
        for p in positions:
            self.tokens.append(p.sampled.token)
            self.token_logprobs.append(_lp(p.sampled.logprob))
            self.top_logprobs.append({t.token: _lp(t.logprob) for t in p.top})
            self.text_offset.append(self.offset)
            self.offset += len(p.sampled.token)

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
