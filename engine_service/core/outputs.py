"""What the engine hands back: per-step updates (streaming) and whole-request outputs (offline API)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprobs:
    """Logprobs at one generated position: the sampled token's and the top alternatives, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    rank: int = 0  # 1-based rank of token_id at its position (1: the most likely); 0: not computed


@dataclass(slots=True)
class SequenceUpdate:
    """New tokens for one sample since the previous step, and whether it finished."""

    request_id: str
    index: int
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] | None
    finish_reason: str | None  # None | "stop" | "length" | "abort"
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    # With the first token of a sample that asked for prompt logprobs: prompt tokens 1..P-1's logprobs.
    prompt_logprobs: list[TokenLogprobs] | None = None
    # An embedding model's pooled vector (its one update, with no token).
    embedding: list[float] | None = None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str | None
    finish_reason: str | None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int
    metrics: RequestMetrics
    prompt: str | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None  # prompt tokens 1..P-1, when asked for

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)
