"""Sampling on the device: every option of SamplingParams, one host sync per step (the token ids).

Order, as vLLM applies it: logprobs come from the raw logits; then logit_bias, the min_tokens mask and
the penalties change the logits, and min_p, top-k and top-p (judged on the logits over the temperature)
set the tokens they exclude to -inf, each only on the rows that ask for it. Then one kernel,
`dispatch.sample_tokens`, reads every logit once: greedy rows take the argmax, the others the Gumbel-max
draw argmax(logits / T + g), which samples softmax(logits / T) exactly. A row's noise g is a pure function
of (its sequence's seed, its number of output tokens, the column), so a sequence's draws do not depend on
the batch it rides in or on a preemption, and a request with a seed repeats. When no row needs any
processing, the LM head's logits (bf16 on a GPU) go to the kernel as they are: no fp32 copy, no softmax.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from engine_service.core.outputs import TokenLogprobs
from engine_service.core.prompt_logprobs import PromptLogprobsChunk
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.sampling_spec import sampler_seed
from engine_service.core.sequence import Sequence
from engine_service.ops import dispatch
from engine_service.worker import host_copy
from engine_service.worker.token_bitmask import TokenBitmask


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    # The step's scored prompt chunks (worker/prompt_logprobs.py), for requests that asked.
    prompt_logprobs: list[PromptLogprobsChunk] = field(default_factory=list)
    # Embedding models: each sampling row's pooled vector, instead of a drawn token (worker/pooler.py).
    pooled: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RowParams:
    """What one row asks of every draw, worked out once from its params (InputBatch keeps it per row)."""

    temperature: float  # 0.0 for a greedy row
    always_processed: bool  # logit_bias, penalties or a filter: its logits change before every draw
    min_tokens: int  # below it, its stop tokens are masked (processed) too
    num_logprobs: int  # -1: none

    @classmethod
    def of(cls, params: SamplingParams) -> RowParams:
        temperature = 0.0 if params.greedy else params.temperature
        logprobs = -1 if params.logprobs is None else params.logprobs
        return cls(temperature, _always_processed(params, temperature), params.min_tokens, logprobs)


def sampling_seed(params: SamplingParams, index: int, rng: random.Random) -> int:
    """A sample's noise seed, 63 bits: from the request's seed and the sample's index, else one drawn from
    `rng`. Fixed once per sequence, so its draws do not depend on the batch or on a preemption."""
    if params.seed is not None:
        return sampler_seed(params.seed, index)
    return rng.getrandbits(63)


@dataclass
class SamplingBatch:
    """A step's sampling rows as the draw needs them, apart from their positions: fixed by the rows' params
    and seeds, so the runner keeps it (its tensors already on the device) while the scheduler says the batch
    is the same (SchedulerOutput.same_batch), as in every step of a steady decode."""

    states: list  # per row, what processing reads: .params, .prompt_token_ids, .output_token_ids
    temperatures: np.ndarray  # [S] float32, 0.0 for a greedy row
    temperature: torch.Tensor  # the same, on the device
    seeds: torch.Tensor  # [S] int64 on the device
    num_logprobs: list[int | None]
    any_logprobs: bool
    always_processed: bool  # a row has logit_bias, penalties or a filter: its logits change every draw
    min_tokens: np.ndarray | None  # [S], when a row has min_tokens (it is processed below them)

    @classmethod
    def build(
        cls,
        states: list,
        temperatures: np.ndarray,
        seeds: np.ndarray,
        processed: np.ndarray,
        min_tokens: np.ndarray,
        num_logprobs: np.ndarray,
        device: torch.device,
    ) -> SamplingBatch:
        """From the rows' columns (RowParams), gathered in batch order: temperatures [S] float32, seeds [S]
        int64, processed [S] bool, min_tokens [S] and num_logprobs [S] int64 (-1: none)."""
        any_logprobs = bool((num_logprobs >= 0).any())
        (seeds_on_device,) = host_copy.int64_parts([seeds], device)
        return cls(
            states=states,
            temperatures=temperatures,
            temperature=host_copy.float32(temperatures, device),
            seeds=seeds_on_device,
            num_logprobs=[None if n < 0 else n for n in num_logprobs.tolist()] if any_logprobs else [],
            any_logprobs=any_logprobs,
            always_processed=bool(processed.any()),
            min_tokens=min_tokens if min_tokens.any() else None,
        )

    def below_min_tokens(self, positions) -> bool:
        """Whether a row draws before its min_tokens-th token (its EOS and stop ids are masked then)."""
        return self.min_tokens is not None and bool((np.asarray(positions) < self.min_tokens).any())


class Sampler:
    def __init__(self, device: torch.device, eos_token_ids: tuple[int, ...], seed: int):
        self.device = device
        self.eos_token_ids = eos_token_ids
        self._rng = random.Random(seed)  # seeds of sequences sampled directly whose request has none

    def __call__(
        self,
        logits: torch.Tensor,
        seqs: list[Sequence],
        positions: list[int] | None = None,
        bitmask: TokenBitmask | None = None,
    ) -> SampleResult:
        """Sample Sequences directly (tests, tools): their rows are worked out for this one draw; a sequence
        keeps the seed drawn for it (`sampling_seed`). `positions` and `bitmask` as in `launch`; the default
        position is each one's next token, len(output_token_ids)."""
        if positions is None:
            positions = [len(s.output_token_ids) for s in seqs]
        for seq in seqs:
            if seq.sampling_seed is None:
                seq.sampling_seed = sampling_seed(seq.params, seq.index, self._rng)
        rows = [RowParams.of(s.params) for s in seqs]
        batch = SamplingBatch.build(
            list(seqs),
            np.array([r.temperature for r in rows], dtype=np.float32),
            np.array([s.sampling_seed for s in seqs], dtype=np.int64),
            np.array([r.always_processed for r in rows], dtype=bool),
            np.array([r.min_tokens for r in rows], dtype=np.int64),
            np.array([r.num_logprobs for r in rows], dtype=np.int64),
            self.device,
        )
        return self.launch(logits, batch, positions, bitmask).result()

    def launch(
        self, logits: torch.Tensor, rows: SamplingBatch, positions, bitmask: TokenBitmask | None = None
    ) -> PendingSample:
        """Queue the draw on the device; the tokens reach the host when `result()` is called.

        logits: [S, V]; positions[i] ([S] ints): which output token of row i this draws (0 = the first),
        which is also the counter of its noise and the length of the output history its penalties read.
        bitmask: the grammar masks of the structured-output rows, applied to the logits (in place) after
        the raw logprobs are taken and before everything else, so filters and the draw see the grammar.
        """
        processing = rows.always_processed or rows.below_min_tokens(positions)
        raw_logprobs = None
        if rows.any_logprobs:
            raw_logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # [S, V]
        if bitmask is not None:
            logits = logits if logits.stride(1) == 1 else logits.contiguous()
            dispatch.apply_token_bitmask(logits, *bitmask.to_device(self.device))
        if processing:
            logits = self._process(
                logits.to(torch.float32, copy=True), rows.states, positions
            )  # a copy, always
            self._exclude_filtered(logits, rows.states, rows.temperatures)
        (counters,) = host_copy.int64_parts([positions], self.device)
        tokens = dispatch.sample_tokens(logits, rows.temperature, rows.seeds, counters)  # [S]
        return PendingSample(tokens, raw_logprobs, rows.num_logprobs)

    # ---- logits processing ---------------------------------------------------------------------
    def _process(
        self, logits: torch.Tensor, seqs: list[Sequence], positions: list[int] | None = None
    ) -> torch.Tensor:
        if positions is None:
            positions = [len(s.output_token_ids) for s in seqs]
        rows_bias = [(i, s.params.logit_bias) for i, s in enumerate(seqs) if s.params.logit_bias]
        for i, bias in rows_bias:
            ids = torch.tensor(list(bias.keys()), device=self.device, dtype=torch.long)
            logits[i, ids] += torch.tensor(list(bias.values()), device=self.device, dtype=logits.dtype)
        for i, s in enumerate(seqs):
            if positions[i] < s.params.min_tokens:
                eos = [] if s.params.ignore_eos else list(self.eos_token_ids)
                banned = list(s.params.stop_token_ids) + eos
                if banned:
                    logits[i, banned] = float("-inf")
        rows = [i for i, s in enumerate(seqs) if s.params.has_penalties]
        if rows:
            history = [seqs[i].output_token_ids[: positions[i]] for i in rows]  # the tokens before this draw
            logits[rows] = self._penalize(logits[rows], [seqs[i] for i in rows], history)
        return logits

    def _penalize(self, logits: torch.Tensor, seqs: list[Sequence], outputs: list[list[int]]) -> torch.Tensor:
        B, V = logits.shape
        counts = torch.zeros(B, V, device=self.device)
        seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
        for i, (s, out) in enumerate(zip(seqs, outputs, strict=True)):
            if out:
                out_ids = torch.tensor(out, device=self.device)
                counts[i].index_add_(0, out_ids, torch.ones(len(out_ids), device=self.device))
            seen[i, torch.tensor(s.prompt_token_ids + out, device=self.device)] = True
        rep = torch.tensor([s.params.repetition_penalty for s in seqs], device=self.device)[:, None]
        freq = torch.tensor([s.params.frequency_penalty for s in seqs], device=self.device)[:, None]
        pres = torch.tensor([s.params.presence_penalty for s in seqs], device=self.device)[:, None]
        # Repetition penalty (CTRL): over prompt and output tokens, shrink positive logits, grow negatives.
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalized, logits)
        # OpenAI's frequency and presence penalties: over generated tokens only.
        return logits - freq * counts - pres * (counts > 0).float()

    # ---- filtering ---------------------------------------------------------------------------------
    def _exclude_filtered(self, logits: torch.Tensor, seqs: list[Sequence], temps: np.ndarray) -> None:
        """-inf, in place, where min_p / top-k / top-p exclude a token of a sampling row."""
        rows = [i for i, s in enumerate(seqs) if temps[i] > 0 and _filters(s.params)]
        if not rows:
            return
        temp = torch.tensor([temps[i] for i in rows], device=self.device)[:, None]  # [R, 1]
        filtered = self._filter(logits[rows] / temp, [seqs[i] for i in rows])  # [R, V]
        logits[rows] = logits[rows].masked_fill(filtered.isneginf(), float("-inf"))

    def _filter(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        V = logits.shape[-1]
        min_p = [s.params.min_p for s in seqs]
        if any(min_p):
            probs = torch.softmax(logits, dim=-1)
            best = probs.max(dim=-1, keepdim=True).values  # [B, 1]
            threshold = torch.tensor(min_p, device=self.device)[:, None] * best
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        top_k = [s.params.top_k if s.params.top_k > 0 else V for s in seqs]
        top_p = [s.params.top_p for s in seqs]
        if all(k >= V for k in top_k) and all(p >= 1.0 for p in top_p):
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        ranks = torch.arange(V, device=self.device)[None, :]
        drop = ranks >= torch.tensor(top_k, device=self.device)[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability mass strictly above each token
        drop |= mass_before >= torch.tensor(top_p, device=self.device)[:, None]
        drop[:, 0] = False  # always keep the most likely token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class PendingSample:
    """A draw queued on the device. On CUDA its tokens are copied to pinned host memory as soon as they
    exist, so `result()` waits only for this step's work, and the caller can queue the next step first."""

    def __init__(self, tokens: torch.Tensor | None, raw_logprobs: torch.Tensor | None, num_logprobs: list):
        self.tokens, self.raw_logprobs, self.num_logprobs = tokens, raw_logprobs, num_logprobs
        self.prompt_logprobs = None  # a PendingPromptLogprobs, set by the model runner when a step has any
        self.pooled: torch.Tensor | None = None  # [B, H]: an embedding model's vectors (worker/pooler.py)
        self._host: torch.Tensor | None = None
        self._ready: torch.cuda.Event | None = None
        if tokens is not None and tokens.is_cuda:
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._host.copy_(tokens, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    @classmethod
    def empty(cls, prompt_logprobs=None) -> PendingSample:
        pending = cls(None, None, [])
        pending.prompt_logprobs = prompt_logprobs
        return pending

    def result(self) -> SampleResult:
        scored = self.prompt_logprobs.result() if self.prompt_logprobs is not None else []
        if self.tokens is None:
            return SampleResult([], [], scored)
        if self._ready is not None:
            self._ready.synchronize()
            token_list = self._host.tolist()
        else:
            token_list = self.tokens.tolist()
        logprobs: list[TokenLogprobs | None] = [None] * len(token_list)
        if self.raw_logprobs is not None:
            logprobs = self._gather_logprobs(token_list)
        pooled = self.pooled.tolist() if self.pooled is not None else []
        return SampleResult(token_list, logprobs, scored, pooled)

    def _gather_logprobs(self, token_list: list[int]) -> list[TokenLogprobs | None]:
        logprobs, wanted = self.raw_logprobs, self.num_logprobs
        k = max(n or 0 for n in wanted)
        chosen = logprobs.gather(-1, self.tokens[:, None])[:, 0].tolist()
        top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
        top_vals = top_vals.tolist() if k else None
        top_ids = top_ids.tolist() if k else None
        out: list[TokenLogprobs | None] = []
        for i, n in enumerate(wanted):
            if n is None:
                out.append(None)
                continue
            top = list(zip(top_ids[i][:n], top_vals[i][:n], strict=True)) if n else []
            out.append(TokenLogprobs(token_list[i], chosen[i], top))
        return out


def _filters(params: SamplingParams) -> bool:
    return params.min_p > 0.0 or params.top_k > 0 or params.top_p < 1.0


def _always_processed(p: SamplingParams, temperature: float) -> bool:
    """Whether some logit of this row changes before every draw (the fp32 copy is made only then); a row
    below its min_tokens is processed as well (see `Sampler.launch`)."""
    return bool(p.logit_bias or p.has_penalties or (temperature > 0 and _filters(p)))
