"""Sampling on the device: every option of SamplingParams, one host sync per step (the token ids).

Order, as vLLM applies it: logprobs come from the raw logits; then logit_bias, the min_tokens mask and
the penalties change the logits; greedy rows take the argmax; the others are divided by their
temperature, filtered by min_p, top-k and top-p, and sampled with the exponential race
(argmax(p / q), q ~ Exp(1)), which draws from p exactly. A row with a seed draws its q from its own
generator, so its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine_service.outputs import TokenLogprobs
from engine_service.request import Sequence


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    def __init__(self, device: torch.device, eos_token_ids: tuple[int, ...], seed: int):
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._seeded: dict[str, torch.Generator] = {}  # seq_id -> generator, for requests with a seed

    def forget(self, seq_id: str) -> None:
        self._seeded.pop(seq_id, None)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:  # logits: [B, V]
        logits = logits.float()
        want_logprobs = [s.params.logprobs is not None for s in seqs]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
        logits = self._process(logits, seqs)
        tokens = self._sample(logits, seqs)  # [B]
        token_list = tokens.tolist()  # the step's one host sync
        results: list[TokenLogprobs | None] = [None] * len(seqs)
        if raw_logprobs is not None:
            results = self._gather_logprobs(raw_logprobs, tokens, token_list, seqs)
        return SampleResult(token_list, results)

    # ---- logits processing ---------------------------------------------------------------------
    def _process(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows_bias = [(i, s.params.logit_bias) for i, s in enumerate(seqs) if s.params.logit_bias]
        for i, bias in rows_bias:
            ids = torch.tensor(list(bias.keys()), device=self.device, dtype=torch.long)
            logits[i, ids] += torch.tensor(list(bias.values()), device=self.device, dtype=logits.dtype)
        for i, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens:
                banned = list(s.params.stop_token_ids) + ([] if s.params.ignore_eos else list(self.eos_token_ids))
                if banned:
                    logits[i, banned] = float("-inf")
        rows = [i for i, s in enumerate(seqs) if s.params.has_penalties]
        if rows:
            logits[rows] = self._penalize(logits[rows], [seqs[i] for i in rows])
        return logits

    def _penalize(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        B, V = logits.shape
        counts = torch.zeros(B, V, device=self.device)
        seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
        for i, s in enumerate(seqs):
            if s.output_token_ids:
                out_ids = torch.tensor(s.output_token_ids, device=self.device)
                counts[i].index_add_(0, out_ids, torch.ones(len(out_ids), device=self.device))
            seen[i, torch.tensor(s.all_token_ids, device=self.device)] = True
        rep = torch.tensor([s.params.repetition_penalty for s in seqs], device=self.device)[:, None]
        freq = torch.tensor([s.params.frequency_penalty for s in seqs], device=self.device)[:, None]
        pres = torch.tensor([s.params.presence_penalty for s in seqs], device=self.device)[:, None]
        # Repetition penalty (CTRL): over prompt and output tokens, shrink positive logits, grow negative ones.
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalized, logits)
        # OpenAI's frequency and presence penalties: over generated tokens only.
        return logits - freq * counts - pres * (counts > 0).float()

    # ---- sampling --------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        greedy = torch.tensor([s.params.greedy for s in seqs], device=self.device)
        argmax = logits.argmax(dim=-1)
        if all(s.params.greedy for s in seqs):
            return argmax
        temp = torch.tensor([s.params.temperature or 1.0 for s in seqs], device=self.device)[:, None]
        logits = logits / temp
        logits = self._filter(logits, seqs)
        probs = torch.softmax(logits, dim=-1)
        q = torch.empty_like(probs)
        q.exponential_(generator=self.generator)
        for i, s in enumerate(seqs):
            if s.params.seed is not None and not s.params.greedy:
                q[i].exponential_(generator=self._generator_for(s))
        sampled = (probs / q).argmax(dim=-1)
        return torch.where(greedy, argmax, sampled)

    def _filter(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        V = logits.shape[-1]
        min_p = [s.params.min_p for s in seqs]
        if any(min_p):
            probs = torch.softmax(logits, dim=-1)
            threshold = torch.tensor(min_p, device=self.device)[:, None] * probs.max(dim=-1, keepdim=True).values
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

    def _generator_for(self, seq: Sequence) -> torch.Generator:
        gen = self._seeded.get(seq.seq_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(seq.params.seed + seq.index)
            self._seeded[seq.seq_id] = gen
        return gen

    # ---- logprobs --------------------------------------------------------------------------------
    def _gather_logprobs(
        self, logprobs: torch.Tensor, tokens: torch.Tensor, token_list: list[int], seqs: list[Sequence]
    ) -> list[TokenLogprobs | None]:
        k = max(s.params.logprobs or 0 for s in seqs)
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
        top_vals, top_ids = (logprobs.topk(k, dim=-1) if k else (None, None))
        top_vals = top_vals.tolist() if k else None
        top_ids = top_ids.tolist() if k else None
        out: list[TokenLogprobs | None] = []
        for i, s in enumerate(seqs):
            n = s.params.logprobs
            if n is None:
                out.append(None)
                continue
            top = list(zip(top_ids[i][:n], top_vals[i][:n], strict=True)) if n else []
            out.append(TokenLogprobs(token_list[i], chosen[i], top))
        return out
