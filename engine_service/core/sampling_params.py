"""SamplingParams: how one request is sampled, validated before it enters the engine loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16  # None: as many as fit in max_model_len
    min_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # top-N alternatives per position; 0 = only the sampled token's logprob
    # Logprobs of the prompt's tokens, with top-N alternatives (0: the prompt token's alone); None: none.
    # Such a request's prompt skips the prefix cache (see core/prompt_logprobs.py).
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def validate(self, vocab_size: int, max_logprobs: int = 20) -> None:
        """Raise ValueError naming the field and its limit."""
        _check(isinstance(self.n, int) and self.n >= 1, f"n must be at least 1, got {self.n!r}")
        _check(self.n <= 128, f"n must be at most 128, got {self.n}")
        if self.max_tokens is not None:
            _check(
                isinstance(self.max_tokens, int) and self.max_tokens >= 1,
                f"max_tokens must be at least 1, got {self.max_tokens!r}",
            )
        _check(
            isinstance(self.min_tokens, int) and self.min_tokens >= 0,
            f"min_tokens must be >= 0, got {self.min_tokens!r}",
        )
        if self.max_tokens is not None:
            _check(
                self.min_tokens <= self.max_tokens,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            )
        _check(
            _finite(self.temperature) and self.temperature >= 0.0,
            f"temperature must be a finite number >= 0, got {self.temperature!r}",
        )
        _check(
            _finite(self.top_p) and 0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p!r}"
        )
        _check(
            isinstance(self.top_k, int) and self.top_k >= -1,
            f"top_k must be -1 (off) or >= 0, got {self.top_k!r}",
        )
        _check(
            _finite(self.min_p) and 0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p!r}"
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2.0 <= value <= 2.0, f"{name} must be in [-2, 2], got {value!r}")
        _check(
            _finite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
            f"repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}",
        )
        for token_id, bias in self.logit_bias.items():
            _check(
                isinstance(token_id, int) and 0 <= token_id < vocab_size,
                f"logit_bias token id {token_id!r} is outside the vocabulary [0, {vocab_size})",
            )
            _check(
                _finite(bias) and -100.0 <= bias <= 100.0,
                f"logit_bias values must be in [-100, 100], got {bias!r}",
            )
        for token_id in self.stop_token_ids:
            _check(
                isinstance(token_id, int) and 0 <= token_id < vocab_size,
                f"stop_token_ids entry {token_id!r} is outside the vocabulary [0, {vocab_size})",
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check(
                    isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_logprobs,
                    f"{name} must be in [0, {max_logprobs}], got {value!r}",
                )
        if self.seed is not None:
            _check(
                isinstance(self.seed, int) and 0 <= self.seed < 2**63,
                f"seed must be in [0, 2^63), got {self.seed!r}",
            )
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
