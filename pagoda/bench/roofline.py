"""The roofline: how fast a workload could possibly run on this card, and how close an engine came.

Two ceilings are measured on the card in the same run (`measure_ceilings`): the bf16 matrix rate (an
8192^3 product) and the copy bandwidth (a device-to-device copy, bytes read plus bytes written). The
work is counted from the model's shape and the workload (`count_work`):

    FLOPs  = 2 * matmul weights * tokens through the layers      (prompt tokens not cached + outputs - 1)
           + 2 * lm_head weights * tokens sampled                (logits only where a token is sampled)
           + 4 * layers * heads * head_dim * sum(keys attended)  (QK^T and PV, causal)
    bytes  = weights read once per forward step * steps          (steps: a lower bound from the batch limits)
           + KV read by every decode token (its whole context) and by every prompt over its cached prefix

The floor is max(FLOPs / matrix rate, bytes / bandwidth): no schedule does better, since even perfect
overlap still has to do all the arithmetic and move all the bytes. Efficiency = floor / measured time.
The input embedding is a gather of a few rows per step, so only the lm_head side of the vocabulary
matrix counts as weights read (tied or not).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelDims:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelDims:
        heads = config["num_attention_heads"]
        return cls(
            num_layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
        )

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's matrix products: q, k, v, o and the gated MLP."""
        q = self.hidden * self.num_heads * self.head_dim
        kv = 2 * self.hidden * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return q + kv + o + mlp

    @property
    def layer_params(self) -> int:
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden  # + the two RMSNorm weights

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """All parameters, a tied embedding counted once (the figure model cards give)."""
        embeddings = self.lm_head_params * (1 if self.tied else 2)
        return self.num_layers * self.layer_params + self.hidden + embeddings

    @property
    def step_weight_params(self) -> int:
        """Parameters one forward step reads: every layer, the final norm and the lm_head."""
        return self.num_layers * self.layer_params + self.hidden + self.lm_head_params

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @property
    def attn_flops_per_key(self) -> int:
        """FLOPs for one query attending to one key, over all layers (QK^T dot + PV accumulate)."""
        return 4 * self.num_layers * self.num_heads * self.head_dim


@dataclass(frozen=True)
class RequestWork:
    prompt_len: int
    output_len: int
    cached_len: int = 0  # prompt tokens found in the prefix cache, not computed


@dataclass(frozen=True)
class Work:
    flops: float
    weight_bytes: float
    kv_read_bytes: float
    num_steps: int
    num_prompt_tokens: int
    num_output_tokens: int

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes


@dataclass(frozen=True)
class Ceilings:
    matmul_flops_per_s: float
    copy_bytes_per_s: float


@dataclass(frozen=True)
class Floor:
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)


def _sum_range(first: int, last: int) -> int:
    """first + (first + 1) + ... + last; 0 when last < first."""
    return 0 if last < first else (first + last) * (last - first + 1) // 2


def min_steps(requests: list[RequestWork], max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """A lower bound on forward steps: a request with L outputs is in at least L steps (its prefill yields the
    first token), a step holds at most max_num_seqs requests and max_num_batched_tokens tokens."""
    seq_steps = sum(r.output_len for r in requests)
    tokens = sum(r.prompt_len - r.cached_len + r.output_len - 1 for r in requests)
    return max(
        max(r.output_len for r in requests),
        math.ceil(seq_steps / max_num_seqs),
        math.ceil(tokens / max_num_batched_tokens),
    )


def count_work(
    dims: ModelDims,
    requests: Iterable[RequestWork],
    max_num_seqs: int,
    max_num_batched_tokens: int,
    dtype_bytes: int = 2,
) -> Work:
    requests = list(requests)
    if not requests:
        raise ValueError("count_work needs at least one request")
    flops = 0
    kv_tokens = 0  # KV entries read, over all requests
    for r in requests:
        if not 0 <= r.cached_len < r.prompt_len or r.output_len < 1:
            raise ValueError(f"bad request {r}")
        # positions c .. P+L-2 go through the model (the last output is sampled, never fed back);
        # the token at position p attends to keys 0..p.
        last = r.prompt_len + r.output_len - 2
        computed = last - r.cached_len + 1
        flops += 2 * dims.num_layers * dims.layer_matmul_params * computed
        flops += 2 * dims.lm_head_params * r.output_len
        flops += dims.attn_flops_per_key * _sum_range(r.cached_len + 1, last + 1)
        kv_tokens += r.cached_len + _sum_range(r.prompt_len + 1, last + 1)
    steps = min_steps(requests, max_num_seqs, max_num_batched_tokens)
    return Work(
        flops=float(flops),
        weight_bytes=float(steps * dims.step_weight_params * dtype_bytes),
        kv_read_bytes=float(kv_tokens * dims.kv_bytes_per_token(dtype_bytes)),
        num_steps=steps,
        num_prompt_tokens=sum(r.prompt_len for r in requests),
        num_output_tokens=sum(r.output_len for r in requests),
    )


def time_floor(work: Work, ceilings: Ceilings) -> Floor:
    return Floor(work.flops / ceilings.matmul_flops_per_s, work.bytes / ceilings.copy_bytes_per_s)


def decode_step_floor(
    dims: ModelDims, batch: int, context_len: int, ceilings: Ceilings, dtype_bytes: int = 2
) -> Floor:
    """One decode step of `batch` sequences, each with `context_len` tokens already in the cache: all weights
    and every sequence's KV read once (at batch 1 this is the bandwidth floor of a token's latency)."""
    keys = context_len + 1
    flops = batch * (
        2 * dims.num_layers * dims.layer_matmul_params
        + 2 * dims.lm_head_params
        + dims.attn_flops_per_key * keys
    )
    nbytes = dims.step_weight_params * dtype_bytes + batch * keys * dims.kv_bytes_per_token(dtype_bytes)
    return Floor(flops / ceilings.matmul_flops_per_s, nbytes / ceilings.copy_bytes_per_s)


def efficiency(floor: Floor, measured_s: float) -> float:
    return floor.seconds / measured_s


# --- measuring the ceilings on the card (CUDA only) ---------------------------------------------------------


def _median_ms(fn, iters: int) -> float:
    import torch

    deadline = time.perf_counter() + 0.2  # warm-up: handles, cuBLAS heuristics, and clocks up to speed
    while time.perf_counter() < deadline:
        fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_matmul_flops(n: int = 8192, iters: int = 20, device: str = "cuda") -> float:
    """bf16 matrix rate in FLOP/s: the median of timed n^3 products on random data (never zeros: they run
    faster than real data)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    ms = _median_ms(lambda: torch.matmul(a, b, out=out), iters)
    return 2 * n**3 / (ms * 1e-3)


def measure_copy_bandwidth(nbytes: int = 1 << 30, iters: int = 20, device: str = "cuda") -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import torch

    src = torch.randint(0, 255, (nbytes,), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), iters)
    return 2 * nbytes / (ms * 1e-3)


def measure_ceilings(device: str = "cuda") -> Ceilings:
    import torch

    ceilings = Ceilings(measure_matmul_flops(device=device), measure_copy_bandwidth(device=device))
    torch.cuda.empty_cache()  # hand the memory back before an engine sizes its KV cache
    return ceilings
