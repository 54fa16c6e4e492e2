"""Resource limits an operator sets on the router, per request and per API key. They count what costs
the engines something, sequences and tokens, not requests: one request may carry 256 prompts with n=128.

    --max-prompt-tokens N                a longer prompt is a 400 (code prompt_too_long)
    --max-tokens-limit N                 a larger max_tokens is a 400; requests without one get N at most
    --max-sequences-per-request N        prompts x n above N is a 400 (default 256)
    --max-concurrent-streams-per-key N   sequences in flight per API key; past it a 429 with Retry-After
                                         (without API keys, all callers share one budget)
    --max-concurrent-tokens-per-key N    tokens in flight per API key (each sequence: its prompt and its
                                         max_tokens); past it a 429 with Retry-After
    --max-response-bytes N               a non-streaming answer that would be larger is a 400 (its JSON is
                                         built in the router's memory; a stream is not)

Limits a request can never meet are 400s, not 429s: clients (the openai SDK among them) retry a 429, and
retrying cannot shorten a prompt. A request larger than a per-key budget on its own is a 400 too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from router.errors import OpenAIError, bad_request

# A logprobs entry's JSON: at least {"token":"x","logprob":-1.5,"bytes":[120]} and its top alternatives;
# the estimate below adds 5 bytes per byte of the token (its text and its "bytes" list).
LOGPROB_ENTRY_MIN_BYTES = 40
LOGPROB_ENTRY_BYTES = 48


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_sequences: int = 256
    max_response_bytes: int = 64 * 1024 * 1024

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

    def check_sequences(self, num_prompts: int, n: int) -> None:
        if num_prompts * n > self.max_sequences:
            raise bad_request(
                f"The request asks for {num_prompts * n} sequences ({num_prompts} prompts x n={n}); this "
                f"server generates at most {self.max_sequences} per request.",
                param="n",
                code="too_many_sequences",
            )

    def check_response(
        self, num_sequences: int, max_tokens: int, sampling: engine_pb2.SamplingParams
    ) -> None:
        """A non-streaming answer with logprobs is built whole in memory: refuse one whose logprobs alone
        would exceed the limit if every sequence ran to max_tokens."""
        if not sampling.HasField("logprobs"):
            return
        logprobs = sampling.logprobs
        least = num_sequences * max_tokens * (1 + logprobs) * LOGPROB_ENTRY_MIN_BYTES
        if least > self.max_response_bytes:
            raise bad_request(
                f"This answer could take {least} bytes or more ({num_sequences} sequences x {max_tokens} "
                f"tokens x {1 + logprobs} logprobs each); this server builds at most "
                f"{self.max_response_bytes} bytes. Set 'stream': true, or ask for fewer tokens, "
                "sequences or logprobs.",
                param="max_tokens",
                code="response_too_large",
            )

    def budget(self) -> ResponseBudget:
        return ResponseBudget(self.max_response_bytes)


class ResponseBudget:
    """Counts a non-streaming answer's bytes as they are gathered; past the limit it is a 400 (and the
    generation is cancelled by the handler's cleanup)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def charge(self, text: str, positions: Iterable = ()) -> None:
        """One engine message: its text, and its logprobs (engine_pb2.PositionLogprobs) if any."""
        self.used += len(text)
        for p in positions:
            self.used += _entry_bytes(p.sampled.token) + sum(_entry_bytes(t.token) for t in p.top)
        if self.used > self.limit:
            raise bad_request(
                f"The answer grew past this server's limit of {self.limit} bytes for a non-streaming "
                "response. Set 'stream': true, or ask for fewer tokens, sequences or logprobs.",
                code="response_too_large",
            )


def _entry_bytes(token: str) -> int:
    return LOGPROB_ENTRY_BYTES + 5 * len(token)


class StreamLimiter:
    """Counts each API key's sequences and tokens in flight; `None` means no limit."""

    def __init__(self, max_sequences_per_key: int | None, max_tokens_per_key: int | None = None):
        self.max_sequences = max_sequences_per_key
        self.max_tokens = max_tokens_per_key
        self._in_flight: dict[str, tuple[int, int]] = {}  # key id -> (sequences, tokens)

    @contextmanager
    def hold(self, key_id: str, sequences: int = 1, tokens: int = 0) -> Iterator[None]:
        if self.max_sequences is None and self.max_tokens is None:
            yield
            return
        self._check("sequences", sequences, self.max_sequences, self.in_flight(key_id))
        self._check("tokens", tokens, self.max_tokens, self._in_flight.get(key_id, (0, 0))[1])
        held_sequences, held_tokens = self._in_flight.get(key_id, (0, 0))
        self._in_flight[key_id] = (held_sequences + sequences, held_tokens + tokens)
        try:
            yield
        finally:
            held_sequences, held_tokens = self._in_flight[key_id]
            left = (held_sequences - sequences, held_tokens - tokens)
            if left[0]:
                self._in_flight[key_id] = left
            else:
                del self._in_flight[key_id]  # no entry per key ever seen: the dict stays small

    @staticmethod
    def _check(what: str, asked: int, limit: int | None, held: int) -> None:
        if limit is None:
            return
        if asked > limit:
            raise bad_request(
                f"The request needs {asked} {what} at once; this server allows at most {limit} per API key.",
                code="rate_limit_exceeded",
            )
        if held + asked > limit:
            raise OpenAIError(
                429,
                f"Too many concurrent {what} for this API key (at most {limit}; {held} in flight); "
                "retry when one has finished.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=1,
            )

    def in_flight(self, key_id: str) -> int:
        """Sequences in flight for the key."""
        return self._in_flight.get(key_id, (0, 0))[0]
