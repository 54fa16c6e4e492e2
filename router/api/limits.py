"""Resource limits an operator sets on the router, per request and per API key.

    --max-prompt-tokens N               a longer prompt is a 400 (code prompt_too_long)
    --max-tokens-limit N                a larger max_tokens is a 400; requests without one get N at most
    --max-concurrent-streams-per-key N  generation requests in flight per API key; one more is a 429 with
                                        Retry-After (without API keys, all callers share one budget)

Limits a request can never meet are 400s, not 429s: clients (the openai SDK among them) retry a 429, and
retrying cannot shorten a prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from router.errors import OpenAIError, bad_request


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None

    def apply(
        self, sampling: engine_pb2.SamplingParams, prompt_len: int, max_model_len: int, param: str
    ) -> engine_pb2.SamplingParams:
        """Checks the (longest) prompt and the completion length after `sampling.check_model` passed;
        returns `sampling`, or a copy with max_tokens set when the limit must cap a request that gave none."""
        if self.max_prompt_tokens is not None and prompt_len > self.max_prompt_tokens:
            raise bad_request(
                f"The prompt has {prompt_len} tokens; this server accepts at most {self.max_prompt_tokens}.",
                param=param,
                code="prompt_too_long",
            )
        if self.max_tokens is None:
            return sampling
        if not sampling.HasField("max_tokens"):  # "as many as fit": at most the limit
            capped = engine_pb2.SamplingParams()
            capped.CopyFrom(sampling)
            capped.max_tokens = min(self.max_tokens, max_model_len - prompt_len)
            return capped
        if sampling.max_tokens > self.max_tokens:
            raise bad_request(
                f"'max_tokens' is {sampling.max_tokens}; this server allows at most {self.max_tokens}.",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        return sampling


class StreamLimiter:
    """Counts each API key's generation requests in flight; `None` means no limit."""

    def __init__(self, max_per_key: int | None):
        self.max_per_key = max_per_key
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        if self.max_per_key is None:
            yield
            return
        count = self._in_flight.get(key_id, 0)
        if count >= self.max_per_key:
            raise OpenAIError(
                429,
                f"Too many concurrent requests for this API key (at most {self.max_per_key}); "
                "retry when one has finished.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=1,
            )
        self._in_flight[key_id] = count + 1
        try:
            yield
        finally:
            left = self._in_flight[key_id] - 1
            if left:
                self._in_flight[key_id] = left
            else:
                del self._in_flight[key_id]  # no entry per key ever seen: the dict stays small

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)
