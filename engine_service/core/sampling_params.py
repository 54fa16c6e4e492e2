"""SamplingParams: how one request is sampled. The one definition of the sampling fields.

Each field carries its bounds and help (`spec(...)`, see sampling_spec.py); the engine's `validate()`, the
gRPC conversion (`from_pb`) and the router's reading of OpenAI bodies all read them from here, and tests
hold engine.proto and router/openapi.yaml to them. The bounds are OpenAI's documented ranges where OpenAI
has the field (temperature [0, 2], top_p (0, 1], penalties [-2, 2], n >= 1, logprobs [0, 20], logit_bias
[-100, 100], seed any signed 64-bit integer); the extensions (top_k, min_p, ...) take vLLM's meaning.

An unset max_tokens means "as many as fit in the context" (max_model_len minus the prompt) offline, over
gRPC and through the router's chat alike: only the engine knows what fits (its context and its KV cache), so
the default is the engine's. vLLM's offline default is 16 instead; pass max_tokens to bound a request. The
router's legacy completions send 16 (or what fits of it) when the client gives none: OpenAI's default there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine_service.core.sampling_spec import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    check_min_tokens,
    check_range,
    check_vocab,
    is_greedy,
    proto_value,
    sampling_fields,
    spec,
)

MAX_N = 128
MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound; EngineConfig.max_logprobs may lower it
MAX_STOP_STRINGS = 64


@dataclass
class SamplingParams:
    n: int = field(default=1, metadata=spec("samples to generate for the prompt", 1, MAX_N))
    max_tokens: int | None = field(
        default=None,
        metadata=spec(
            "most tokens to generate per sample (unset: as many as fit in the model's context)", 1, UINT32_MAX
        ),
    )
    min_tokens: int = field(
        default=0,
        metadata=spec(
            "tokens to generate before EOS or a stop token id may end a sample", 0, UINT32_MAX, openai=False
        ),
    )
    temperature: float = field(
        default=1.0, metadata=spec("softmax temperature; below 1e-5 the sample is greedy (argmax)", 0.0, 2.0)
    )
    top_p: float = field(
        default=1.0,
        metadata=spec(
            "nucleus sampling: draw from the most likely tokens that hold this much probability mass",
            0.0,
            1.0,
            lo_open=True,
        ),
    )
    top_k: int = field(
        default=-1,
        metadata=spec("draw from the k most likely tokens only; -1 or 0: off", -1, INT32_MAX, openai=False),
    )
    min_p: float = field(
        default=0.0,
        metadata=spec(
            "drop tokens less likely than min_p times the most likely one (0: off)", 0.0, 1.0, openai=False
        ),
    )
    presence_penalty: float = field(
        default=0.0,
        metadata=spec("penalty subtracted from the logit of every token already generated", -2.0, 2.0),
    )
    frequency_penalty: float = field(
        default=0.0,
        metadata=spec("penalty subtracted from a token's logit once per time it was generated", -2.0, 2.0),
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata=spec(
            "divides the positive logits (multiplies the negative ones) of tokens in the prompt or the "
            "output (1: off)",
            0.0,
            10.0,
            lo_open=True,
            openai=False,
        ),
    )
    logit_bias: dict[int, float] = field(
        default_factory=dict,
        metadata=spec("token id -> bias added to its logit before sampling", -100.0, 100.0),
    )
    seed: int | None = field(
        default=None,
        metadata=spec(
            "any signed 64-bit integer: the same seed gives the same tokens whatever else is in the batch "
            "(unset: a random draw)",
            INT64_MIN,
            INT64_MAX,
        ),
    )
    ignore_eos: bool = field(default=False, metadata=spec("keep generating past EOS", openai=False))
    stop_token_ids: list[int] = field(
        default_factory=list,
        metadata=spec("token ids that end a sample (kept in the output)", 0, UINT32_MAX, openai=False),
    )
    stop: list[str] = field(
        default_factory=list,
        metadata=spec(
            "strings that end a sample; the match is cut from the text", max_items=MAX_STOP_STRINGS
        ),
    )
    include_stop_str_in_output: bool = field(
        default=False, metadata=spec("keep the matched stop string in the text", openai=False)
    )
    skip_special_tokens: bool = field(
        default=True, metadata=spec("leave special tokens out of the decoded text", openai=False)
    )
    logprobs: int | None = field(
        default=None,
        metadata=spec(
            "return the sampled token's logprob and this many top alternatives per position "
            "(0: the sampled one's only; unset: no logprobs)",
            0,
            MAX_LOGPROBS,
        ),
    )
    # Such a request's prompt skips the prefix cache until its first token (core/prompt_logprobs.py).
    prompt_logprobs: int | None = field(
        default=None,
        metadata=spec(
            "return the logprob of every prompt token (the first has none) and this many top alternatives "
            "per position (0: the prompt token's own only; unset: none)",
            0,
            MAX_LOGPROBS,
            openai=False,
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, as OpenAI bodies may give it
            self.stop = [self.stop]

    @classmethod
    def from_pb(cls, msg) -> SamplingParams:
        """From a `pagoda.engine.v1.SamplingParams` message: unset optional fields take the defaults above."""
        return cls(**{name: proto_value(msg, f) for name, f in SAMPLING_FIELDS.items()})

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def validate(self, vocab_size: int, max_logprobs: int = MAX_LOGPROBS) -> None:
        """Raise a SamplingError (a ValueError) naming the field and its bound."""
        for name, f in SAMPLING_FIELDS.items():
            f.check(getattr(self, name))
        check_min_tokens(self.min_tokens, self.max_tokens)
        check_vocab("logit_bias", self.logit_bias, vocab_size)
        check_vocab("stop_token_ids", self.stop_token_ids, vocab_size)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and max_logprobs < MAX_LOGPROBS:  # this engine serves fewer
                bounds = dataclasses.replace(SAMPLING_FIELDS[name].bounds, hi=max_logprobs)
                check_range(bounds, name, value)


SAMPLING_FIELDS = sampling_fields(SamplingParams)
