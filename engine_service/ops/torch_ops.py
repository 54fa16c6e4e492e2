"""Plain-torch reference implementations of the engine's kernels (the CPU path).

KV-cache layout, shared with the Triton kernels:
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    slot = block_id * block_size + offset_in_block; slot -1 means "do not write" (padding).

A step is a flat batch of T new tokens from S sequences:
    query_start_loc: int32 [S + 1]  tokens of sequence s are q[query_start_loc[s]:query_start_loc[s+1]]
    seq_lens:        int32 [S]      tokens in the cache for s after this step's writes (context + new)
    block_tables:    int32 [S, M]   block ids of s, in order; unused entries are ignored

      seq s:  |<------------- seq_lens[s] ------------->|
              | cached context (already in KV) | new q  |
                                               ^ query i sits at position seq_len - q_len + i
    and attends causally to keys 0 ..= its position.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def write_kv_cache(
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """An fp8 cache stores k / k_scale and v / v_scale, saturated to e4m3's range (per-tensor scales)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = _to_cache(k[keep], k_cache.dtype, k_scale)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = _to_cache(v[keep], v_cache.dtype, v_scale)


def _to_cache(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    if dtype == torch.float8_e4m3fn:
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x.to(dtype)


def _from_cache(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """float32 values of cached K or V: an fp8 cache's times its scale, else as the model's dtype has them."""
    if x.dtype == torch.float8_e4m3fn:
        return x.float() * scale
    return x.to(dtype).float()


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    query_start_loc: torch.Tensor,  # int32 [S + 1]
    seq_lens: torch.Tensor,  # int32 [S]
    block_tables: torch.Tensor,  # int32 [S, M]
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of each sequence's new queries over its paged KV (prefill chunks and decodes).

    sliding_window W: a query at position p sees keys p - W < j <= p (W keys, itself included; Mistral,
    Gemma, Phi-3). logit_softcap c: scores become c * tanh(scores / c) before the mask (Gemma 2).
    k_scale / v_scale: the per-tensor scales of an fp8 cache (its values times the scale are K and V)."""
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for s, seq_len in enumerate(lens):
        q_s = q[starts[s] : starts[s + 1]]  # [L, Hq, D]
        q_len = q_s.shape[0]
        if q_len == 0:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = block_tables[s, :num_blocks].long()
        k_s = _from_cache(k_cache[blocks].flatten(0, 1)[:seq_len], q.dtype, k_scale)  # fp32 [C, Hkv, D]
        v_s = _from_cache(v_cache[blocks].flatten(0, 1)[:seq_len], q.dtype, v_scale)
        k_s = k_s.repeat_interleave(group, dim=1)  # [C, Hq, D]
        v_s = v_s.repeat_interleave(group, dim=1)
        scores = torch.einsum("lhd,chd->hlc", q_s.float(), k_s) * scale  # [Hq, L, C]
        if logit_softcap:
            scores = torch.tanh(scores / logit_softcap) * logit_softcap
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]  # [L, 1]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]  # [1, C]
        hidden = k_pos > q_pos
        if sliding_window:
            hidden |= k_pos <= q_pos - sliding_window
        scores.masked_fill_(hidden, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[s] : starts[s + 1]] = torch.einsum("hlc,chd->lhd", probs, v_s).to(q.dtype)
    return out


def vocab_slice_embedding(input_ids: torch.Tensor, weight: torch.Tensor, start: int) -> torch.Tensor:
    """input_ids [T] -> [T, hidden]: weight[id - start] for the ids in [start, start + rows), zeros else."""
    local = input_ids - start
    inside = (local >= 0) & (local < weight.shape[0])
    return torch.nn.functional.embedding(local.clamp(0, weight.shape[0] - 1), weight) * inside[:, None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual <- x + residual; returns (rms_norm(residual), residual). Out of place on this path."""
    residual = (x.float() + residual.float()).to(x.dtype)
    return rms_norm(residual, weight, eps), residual


def rotary_embedding(
    positions: torch.Tensor,  # int64 [T]
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # float32 [max_positions, R]: cos in [:, :R/2], sin in [:, R/2:]; R <= D
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding (rotate halves), as Llama/Mistral/Qwen checkpoints in HF format use, of
    the first R = cos_sin_cache.shape[1] dimensions of each head (partial rotary: R < D; the rest pass)."""
    half = cos_sin_cache.shape[-1] // 2
    cos, sin = cos_sin_cache[positions].float().split(half, dim=-1)  # [T, R/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2, rest = x.float().split([half, half, x.shape[-1] - 2 * half], dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> silu(gate) * up: [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> gelu(gate) * up with GELU's tanh approximation: [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


# ---- mixture of experts ----------------------------------------------------------------------------
def moe_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], expert ids int64 [T, k]): softmax over the experts in float32, the top k,
    renormalized to sum to one when the model says so (Mixtral, Qwen3-MoE; not Qwen2-MoE)."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_moe(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]: gate rows then up rows of every expert
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # float32 [T, k]
    topk_ids: torch.Tensor,  # int64 [T, k]
) -> torch.Tensor:  # [T, H]
    """sum over a token's k experts of weight * down(silu(gate(x)) * up(x)), expert by expert as
    transformers does (the weight rounded to x's dtype before it multiplies)."""
    out = torch.zeros_like(x)
    inter = w13.shape[1] // 2
    for expert in topk_ids.unique().tolist():
        token, slot = torch.where(topk_ids == expert)
        gate_up = x[token] @ w13[expert].t()  # [n, 2I]
        h = torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = (h @ w2[expert].t()) * topk_weights[token, slot, None].to(x.dtype)  # [n, H]
        out.index_add_(0, token, y)
    return out


# ---- FP8 (e4m3) GEMM ---------------------------------------------------------------------------------
def quantize_activations(
    x: torch.Tensor, group: int | None = None, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], float32 scales [M, ceil(K / group)]) with x ~= q * scale: per row (group
    None), per row and group of K, or one static scale (returned as [M, 1])."""
    m, k = x.shape
    group = group or k
    pad = -k % group
    xf = torch.nn.functional.pad(x.float(), (0, pad)).view(m, -1, group)  # [M, G, group]
    if static_scale is not None:
        scales = static_scale.float().reshape(1, 1).expand(m, xf.shape[1])
    else:
        scales = (xf.abs().amax(dim=-1) / FP8_MAX).clamp_min(1e-12)  # [M, G]
    q = (xf / scales[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(m, -1)[:, :k], scales[:, :1] if static_scale is not None else scales


def fp8_linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # fp8 [N, K]
    weight_scale: torch.Tensor,  # float32 [N] (per row) or [ceil(N/bn), ceil(K/bk)] (block (bn, bk))
    input_scale: torch.Tensor | None,  # float32 []: static activation scale; None: dynamic
    block: tuple[int, int] | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N]
    """W8A8: the activations quantized as the GPU path does (per token, per 1 x bk group for block weights,
    or the static scale), both operands dequantized, the product in float32."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    q, scales = quantize_activations(x2, block[1] if block else None, input_scale)
    if block is None:
        a = q.float() * scales
        w = weight.float() * weight_scale.float()[:, None]
    else:
        bn, bk = block
        a = q.float() * scales.repeat_interleave(bk, dim=1)[:, :k]
        w_scale = weight_scale.float().repeat_interleave(bn, dim=0)[: weight.shape[0]]
        w = weight.float() * w_scale.repeat_interleave(bk, dim=1)[:, :k]
    out = a @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).view(*lead, weight.shape[0])


# ---- sampling --------------------------------------------------------------------------------------------
# Gumbel-max: token = argmax(logits / T + g), g = -ln(-ln u), draws exactly from softmax(logits / T).
# Computed in base 2, argmax(logits * log2(e) / T - log2(-log2 u)): the same argmax (it is the base-e score
# times log2(e) minus a constant), and log2 is the log the GPU has in hardware.
#
# u for (seed, position, column) is word `column % 4` of Philox4x32-10 (Salmon et al., SC'11: the generator
# of cuRAND, JAX and Triton's tl.rand) with the row's 63-bit seed as key and counter (column // 4, position,
# 0, 0). Philox passes BigCrush with a margin at 10 rounds, and a keyed bijection gives every key (seed,
# seed + 1, ... for the samples of one request) its own stream. `triton_sampling` does the same uint32
# arithmetic; here it is int64 holding 32-bit values, products split in 16-bit halves so nothing overflows,
# so both paths draw bit-identical u. The top 23 bits make u = (2k + 1) * 2^-24 in [2^-24, 1 - 2^-24]:
# exact in fp32, never 0 or 1, so g is finite: g in [-2.8, 16.6], so a token more than 19.4 nats below the
# best is never drawn (its true probability is below 4e-9).

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key increments (golden ratio, sqrt(3) - 1)
PHILOX_ROUNDS = 10
LOG2E = 1.4426950408889634
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for int64 a in [0, 2^32): m split in 16-bit halves (< 2^48 each)."""
    p_lo, p_hi = a * (m & 0xFFFF), a * (m >> 16)
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # a * m = t + (p_hi >> 16) * 2^32
    return (t >> 32) + (p_hi >> 16), t & _MASK32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32 on broadcastable int64 tensors holding uint32 values (Random123's rounds and key bumps)."""
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def sampling_uniform(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """u in (0, 1) of every (row, column): float32 [R, vocab] from int64 seeds [R] and positions [R]."""
    counters = torch.arange((vocab + 3) // 4, device=seeds.device)[None, :]  # [1, C]
    zero = torch.zeros(1, 1, dtype=torch.int64, device=seeds.device)
    key0, key1 = (seeds & _MASK32)[:, None], (seeds >> 32)[:, None]  # [R, 1] each
    words = philox4x32(counters, (positions & _MASK32)[:, None], zero, zero, key0, key1)
    # Top 23 bits as the mantissa of a float in [1, 2), then shifted down by 1 - 2^-24: exact.
    u = [((w >> 9) | 0x3F800000).to(torch.int32).view(torch.float32) - (1.0 - 2.0**-24) for w in words]
    return torch.stack(u, dim=-1).flatten(1)[:, :vocab]  # [R, C, 4] -> [R, V]: column 4c + i is word i


def sample_tokens(
    logits: torch.Tensor,  # [B, V], any float dtype
    temperature: torch.Tensor,  # float32 [B]; 0 = greedy
    seeds: torch.Tensor,  # int64 [B], in [0, 2^63)
    positions: torch.Tensor,  # int64 [B]: the noise's counter, e.g. the sequence's output tokens so far
) -> torch.Tensor:  # int64 [B]
    """Greedy rows take the argmax, the others the Gumbel-max draw above; ties go to the lowest index."""
    scores = logits.float()  # [B, V]
    tokens = scores.argmax(dim=-1)
    rows = (temperature > 0).nonzero()[:, 0]  # the CPU path may sync; only rows that sample pay for noise
    if len(rows):
        u = sampling_uniform(seeds[rows], positions[rows], scores.shape[1])  # [R, V]
        scale = (LOG2E / temperature[rows])[:, None]  # float32 [R, 1]
        tokens[rows] = (scores[rows] * scale - torch.log2(-torch.log2(u))).argmax(dim=-1)
    return tokens
