"""The sampling fields both endpoints share: read and range-checked from the body, checked against the
model once it is known, and turned into the engine's `SamplingParams`."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2
from router.api.validation import as_float, as_int, opt_bool, opt_float, opt_int, str_list
from router.errors import bad_request
from router.upstream.model_card import ModelCard

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 64
_U64 = (1 << 64) - 1
_U32, _I32 = (1 << 32) - 1, (1 << 31) - 1  # the proto's field widths

SAMPLING_FIELDS = frozenset(
    {
        "n",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        # Extensions most OpenAI-compatible servers accept.
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "skip_special_tokens",
        "include_stop_str_in_output",
    }
)


@dataclass(frozen=True, slots=True)
class Sampling:
    n: int = 1
    max_tokens: int | None = None  # None: whatever fits in the model's context
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # top alternatives per position; None: no logprobs at all
    prompt_logprobs: int | None = None  # top alternatives per prompt position; None: no prompt logprobs

    def check(self, prompt_len: int, model: ModelCard, param: str) -> None:
        """Checks what needs the model: the context length and token ids against the vocabulary."""
        if prompt_len >= model.max_model_len or (
            self.max_tokens is not None and prompt_len + self.max_tokens > model.max_model_len
        ):
            asked = f"{prompt_len + (self.max_tokens or 1)} tokens ({prompt_len} in the prompt, " + (
                f"{self.max_tokens} for the completion)"
                if self.max_tokens
                else "at least 1 for the completion)"
            )
            raise bad_request(
                f"This model's maximum context length is {model.max_model_len} tokens. "
                f"However, you requested {asked}. Please reduce the length of the prompt or the completion.",
                param=param,
                code="context_length_exceeded",
            )
        for name, ids in (
            ("logit_bias", [t for t, _ in self.logit_bias]),
            ("stop_token_ids", self.stop_token_ids),
        ):
            for t in ids:
                if t >= model.vocab_size:
                    raise bad_request(
                        f"'{name}' holds token id {t}, outside the vocabulary (size {model.vocab_size}).",
                        param=name,
                    )

    def to_pb(self) -> engine_pb2.SamplingParams:
        pb = engine_pb2.SamplingParams(
            n=self.n,
            min_tokens=self.min_tokens,
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=dict(self.logit_bias),
            ignore_eos=self.ignore_eos,
            stop_token_ids=self.stop_token_ids,
            stop=self.stop,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
        )
        # proto3 `optional` fields: unset means "the engine's default", so only set what the client gave.
        for name in (
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "repetition_penalty",
            "logprobs",
            "prompt_logprobs",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(pb, name, value)
        if self.seed is not None:
            pb.seed = self.seed & _U64  # OpenAI seeds may be negative; the engine takes 64 bits
        return pb


def parse_sampling(body: dict, *, max_tokens: int | None, logprobs: int | None) -> Sampling:
    """Reads the shared fields; `max_tokens` and `logprobs` differ per endpoint and come in parsed."""
    min_tokens = opt_int(body, "min_tokens", lo=0, hi=_U32) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise bad_request(
            f"'min_tokens' ({min_tokens}) must not exceed max_tokens ({max_tokens}).", "min_tokens"
        )
    top_k = opt_int(body, "top_k", lo=-1, hi=_I32)
    stop = body.get("stop")
    stop_token_ids = body.get("stop_token_ids")
    if stop_token_ids is not None and not isinstance(stop_token_ids, list):
        raise bad_request("'stop_token_ids' must be a list of token ids.", "stop_token_ids")
    return Sampling(
        n=opt_int(body, "n", lo=1, hi=MAX_N) or 1,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        temperature=opt_float(body, "temperature", lo=0.0, hi=2.0),
        top_p=opt_float(body, "top_p", lo=0.0, hi=1.0, lo_open=True),
        top_k=None if top_k in (None, 0) else top_k,
        min_p=opt_float(body, "min_p", lo=0.0, hi=1.0) or 0.0,
        presence_penalty=opt_float(body, "presence_penalty", lo=-2.0, hi=2.0) or 0.0,
        frequency_penalty=opt_float(body, "frequency_penalty", lo=-2.0, hi=2.0) or 0.0,
        repetition_penalty=opt_float(body, "repetition_penalty", lo=0.0, hi=10.0, lo_open=True),
        logit_bias=_logit_bias(body.get("logit_bias")),
        seed=opt_int(body, "seed", lo=-(1 << 63), hi=_U64),
        ignore_eos=opt_bool(body, "ignore_eos"),
        stop=() if stop is None else str_list(stop, "stop", max_items=MAX_STOP_STRINGS),
        stop_token_ids=tuple(as_int(t, "stop_token_ids", lo=0, hi=_U32) for t in stop_token_ids or ()),
        include_stop_str_in_output=opt_bool(body, "include_stop_str_in_output"),
        skip_special_tokens=opt_bool(body, "skip_special_tokens", default=True),
        logprobs=logprobs,
    )


def _logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases.", "logit_bias")
    out = []
    for key, bias in value.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"'logit_bias' keys must be token ids, got {key!r}.", "logit_bias") from None
        if token < 0:
            raise bad_request(f"'logit_bias' keys must be non-negative token ids, got {key!r}.", "logit_bias")
        out.append((token, as_float(bias, "logit_bias", lo=-100.0, hi=100.0)))
    return tuple(out)
