"""Benchmark workloads: seeded lists of (prompt token ids, tokens to generate), the same for every engine.

    fixed          every prompt input_len random tokens, every request output_len tokens
    random         input length uniform in [input_len * (1 - r), input_len * (1 + r)], output length likewise
                   around output_len (r = range_ratio, 0.5 by default: 256..768 in, 128..384 out)
    shared-prefix  every prompt starts with the same prefix_len tokens (1,024), then input_len tokens of
                   its own; output_len tokens each

Prompts are random token ids drawn away from the ends of the vocabulary (where special tokens live); EOS is
ignored by every engine, so the outputs have exactly the requested lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

WORKLOADS = ("fixed", "random", "shared-prefix")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str  # fixed | random | shared-prefix
    num_prompts: int = 1000
    input_len: int = 512
    output_len: int = 256
    range_ratio: float = 0.5  # random: lengths uniform within +-range_ratio of input_len / output_len
    prefix_len: int = 1024  # shared-prefix: tokens every prompt starts with
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {self.name!r}")
        if self.num_prompts < 1 or self.input_len < 1 or self.output_len < 1:
            raise ValueError("num_prompts, input_len and output_len must be >= 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def max_prompt_len(self) -> int:
        if self.name == "random":
            return int(self.input_len * (1 + self.range_ratio))
        if self.name == "shared-prefix":
            return self.prefix_len + self.input_len
        return self.input_len

    @property
    def max_output_len(self) -> int:
        return int(self.output_len * (1 + self.range_ratio)) if self.name == "random" else self.output_len

    @property
    def shared_prefix_len(self) -> int:
        return self.prefix_len if self.name == "shared-prefix" else 0


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    max_tokens: int


def _token_range(vocab_size: int) -> tuple[int, int]:
    margin = min(100, vocab_size // 8)
    return margin, vocab_size - margin


def random_prompts(num: int, length: int, vocab_size: int, rng: np.random.Generator) -> list[list[int]]:
    low, high = _token_range(vocab_size)
    return rng.integers(low, high, size=(num, length)).tolist()


def build(spec: WorkloadSpec, vocab_size: int) -> list[Request]:
    """The workload's requests, identical for a given spec and vocabulary size."""
    rng = np.random.default_rng(spec.seed)
    n = spec.num_prompts
    if spec.name == "fixed":
        prompts = random_prompts(n, spec.input_len, vocab_size, rng)
        return [Request(p, spec.output_len) for p in prompts]
    if spec.name == "random":
        r = spec.range_ratio
        in_lens = rng.integers(max(1, int(spec.input_len * (1 - r))), spec.max_prompt_len + 1, size=n)
        out_lens = rng.integers(max(1, int(spec.output_len * (1 - r))), spec.max_output_len + 1, size=n)
        low, high = _token_range(vocab_size)
        return [
            Request(rng.integers(low, high, size=int(i)).tolist(), int(o))
            for i, o in zip(in_lens, out_lens, strict=True)
        ]
    prefix = random_prompts(1, spec.prefix_len, vocab_size, rng)[0]
    suffixes = random_prompts(n, spec.input_len, vocab_size, rng)
    return [Request(prefix + s, spec.output_len) for s in suffixes]


def warmup_prompts(num: int, length: int, vocab_size: int) -> list[list[int]]:
    """Prompts for the untimed warm-up, from a seed of their own: they share no prefix with the workload."""
    return random_prompts(num, length, vocab_size, np.random.default_rng(2**31 - 1))


def decode_probe_prompts(batch: int, length: int, vocab_size: int) -> list[list[int]]:
    """Prompts for the decode-step probe (see `decode_step_ms`)."""
    return random_prompts(batch, length, vocab_size, np.random.default_rng(2**31 - 2 - batch))


def decode_step_ms(seconds_short: float, seconds_long: float, short: int, long: int) -> float:
    """One decode step's time from two runs of the same prompts that differ only in tokens generated.

    The runs share prefill, start-up and tail, so the difference is (long - short) decode steps at the
    full batch: this holds for any engine, with no per-token timestamps needed.
    """
    if long <= short:
        raise ValueError(f"the long run must generate more tokens than the short one ({long} <= {short})")
    return (seconds_long - seconds_short) / (long - short) * 1e3


def probe_decode_steps(
    generate: Callable[[list[list[int]], int], float],
    batch_sizes: Sequence[int],
    tokens: tuple[int, int],
    prompt_len: int,
    vocab_size: int,
) -> dict[str, float]:
    """Decode step time (ms) at each batch size. `generate(prompts, max_tokens)` runs the prompts to exactly
    max_tokens outputs and returns its wall time. The short run goes once untimed first, so that compiling
    or capturing for a new batch size does not land in one timed run and not the other."""
    short, long = tokens
    steps = {}
    for batch in batch_sizes:
        prompts = decode_probe_prompts(batch, prompt_len, vocab_size)
        generate(prompts, short)
        seconds_short = generate(prompts, short)
        seconds_long = generate(prompts, long)
        steps[str(batch)] = round(decode_step_ms(seconds_short, seconds_long, short, long), 4)
    return steps
