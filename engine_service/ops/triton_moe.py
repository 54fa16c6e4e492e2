"""Fused mixture-of-experts MLP in Triton: tokens sorted by expert, two grouped GEMMs over the experts.

Same contract as `torch_ops.fused_moe`. With T tokens and k experts each there are P = T * k (token,
expert) pairs, pair p = t * k + j:

  1. align (`moe_align_block_size`): pairs sorted by expert, each expert's run padded to a multiple of
     BLOCK_M with the sentinel P, so every BLOCK_M rows of the sorted list belong to one expert:

        sorted_ids  [ e0 e0 e0 P | e1 P P P | e3 e3 e3 e3 | e3 P P P ]     (BLOCK_M = 4)
        expert_ids  [ 0          | 1        | 3           | 3        ]     one per block
        num_post    16                                                      rows in use

     No host sync (CUDA-graph safe): the sorted list is sized for the worst case,
     P + min(E, P) * (BLOCK_M - 1), and blocks past `num_post` exit at once. Up to SMALL_PAIRS pairs
     (decode) one Triton program does it all (a histogram, a sort of expert * P + pair keys, scans);
     larger batches use torch ops (a stable sort and scans, a dozen launches that a prefill hides).
  2. GEMM 1 (gated): for each block, rows x[p // k] times its expert's gate and up rows, both
     accumulated in one program, written as silu(gate) * up: [P, I]. SiLU-and-mul costs no extra pass.
  3. GEMM 2: those rows times the expert's down matrix, scaled by the pair's routing weight: [P, H].
  4. The k rows of a token summed: [T, H].

Under tensor parallelism each rank holds a slice of every expert's intermediate dimension (I / tp rows of
gate and up, I / tp columns of down), so step 3 gives partial sums that the next norm reduces, as a dense
MLP's row-parallel down projection does.

Launch shapes: `moe_config` picks them by the number of tokens from a table per card and expert shape,
with a default for shapes not in it (see _CONFIGS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous


@dataclass(frozen=True)
class MoeConfig:
    block_m: int  # rows (pairs) per program: every one of them is the same expert's
    block_n: int
    block_k: int
    group_m: int  # programs along M that walk the N tiles together (L2 reuse of the expert's weights)
    num_warps: int
    num_stages: int


# Default launch shapes by the largest token count they serve. Decode (few tokens per expert) streams the
# experts' weights: small M tiles waste no bytes, narrow N tiles give every SM work. Prefill fills M.
_DEFAULT = [
    (32, MoeConfig(16, 64, 128, 1, 4, 4)),
    (128, MoeConfig(32, 64, 128, 1, 4, 3)),
    (1024, MoeConfig(64, 128, 64, 8, 8, 3)),
    (1 << 62, MoeConfig(128, 128, 64, 8, 8, 3)),
]
# (card substring, experts, intermediate per rank, hidden) -> table; to be tuned on the card
# (benchmarks/tune_moe.py). Until then these entries repeat the default, named so the lookup is exercised.
_CONFIGS: dict[tuple[str, int, int, int], list[tuple[int, MoeConfig]]] = {
    ("H100", 128, 768, 2048): _DEFAULT,  # Qwen3-30B-A3B, TP 1
    ("H200", 128, 768, 2048): _DEFAULT,
    ("H100", 8, 14336, 4096): _DEFAULT,  # Mixtral-8x7B, TP 1
    ("H200", 8, 14336, 4096): _DEFAULT,
}


@functools.cache
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def moe_config(num_tokens: int, num_experts: int, inter: int, hidden: int, device: torch.device) -> MoeConfig:
    name = _device_name(device.index or 0) if device.type == "cuda" else "cpu"
    table = next(
        (
            t
            for (card, e, i, h), t in _CONFIGS.items()
            if card in name and (e, i, h) == (num_experts, inter, hidden)
        ),
        _DEFAULT,
    )
    return next(config for bound, config in table if num_tokens <= bound)


def moe_align_block_size(
    topk_ids: torch.Tensor, block_m: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids int32 [S], expert_ids int32 [S / block_m], num_post int32 [1]); see the module doc."""
    flat = topk_ids.reshape(-1)  # [P]
    num_pairs = flat.numel()
    size = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    size = triton.cdiv(size, block_m) * block_m
    if 0 < num_pairs <= SMALL_PAIRS:
        return _align_small(flat, block_m, num_experts, size)
    dev = flat.device
    order = torch.sort(flat, stable=True).indices  # pairs by expert, in pair order within one
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    # where expert e's first pair goes in the sorted list, minus where it is among the sorted pairs
    shift = (padded_end - padded) - (counts.cumsum(0) - counts)
    dest = shift[flat[order]] + torch.arange(num_pairs, device=dev)
    sorted_ids = torch.full((size,), num_pairs, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    block_starts = torch.arange(0, size, block_m, device=dev)
    expert_ids = torch.searchsorted(padded_end, block_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_ids, expert_ids.to(torch.int32), padded_end[-1:].to(torch.int32)


SMALL_PAIRS = 4096  # pairs up to which one program aligns them (its sort holds them all in registers)


@triton.jit
def _align_small_kernel(
    ids_ptr,  # [P] expert of each pair
    sorted_ids_ptr,  # int32 [S]
    expert_ids_ptr,  # int32 [S / BLOCK_M]
    num_post_ptr,  # int32 [1]
    shift_ptr,  # int32 [E_PAD] scratch: (padded start - sorted start) of each expert
    num_pairs,
    size,  # S
    num_experts,
    max_blocks,  # most blocks one expert can have: cdiv(P, BLOCK_M)
    BLOCK_M: tl.constexpr,
    P_PAD: tl.constexpr,
    E_PAD: tl.constexpr,  # > num_experts: the last bin counts the padding lanes
    FILL: tl.constexpr,  # sentinel stores per loop step
    PDL: tl.constexpr,
):
    """moe_align_block_size in one program (see the module doc for the layout)."""
    if PDL:
        wait_for_previous()
    lane = tl.arange(0, P_PAD)
    valid = lane < num_pairs
    expert = tl.load(ids_ptr + lane, mask=valid, other=E_PAD - 1).to(tl.int32)
    counts = tl.histogram(expert, E_PAD)  # [E_PAD]
    e = tl.arange(0, E_PAD)
    counts = tl.where(e < num_experts, counts, 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    padded_end = tl.cumsum(padded, axis=0)
    count_end = tl.cumsum(counts, axis=0)
    tl.store(shift_ptr + e, (padded_end - padded) - (count_end - counts))
    tl.store(num_post_ptr, tl.sum(padded, axis=0))
    # Each expert writes its id over its blocks (blocks past num_post are never read).
    first_block = (padded_end - padded) // BLOCK_M
    num_blocks = padded // BLOCK_M
    for b in range(0, max_blocks):
        tl.store(expert_ids_ptr + first_block + b, e, mask=b < num_blocks)
    for start in range(0, size, FILL):
        offs = start + tl.arange(0, FILL)
        tl.store(sorted_ids_ptr + offs, tl.zeros([FILL], dtype=tl.int32) + num_pairs, mask=offs < size)
    tl.debug_barrier()  # the shifts and sentinels are written before any thread reads or overwrites them
    keys = tl.sort(tl.where(valid, expert * P_PAD + lane, E_PAD * P_PAD))  # by expert, then pair
    pair = keys % P_PAD
    sorted_expert = keys // P_PAD
    ok = keys < E_PAD * P_PAD
    shift = tl.load(shift_ptr + sorted_expert, mask=ok, other=0)
    tl.store(sorted_ids_ptr + shift + lane, pair, mask=ok)


@triton.jit
def _topk_kernel(
    logits_ptr,  # [T, E]
    weights_ptr,  # float32 [T, K]
    ids_ptr,  # int64 [T, K]
    num_experts,
    stride_lt,
    K: tl.constexpr,
    K_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    PDL: tl.constexpr,
):
    """One token: softmax over its experts in fp32, the k largest (lowest index first among equals)."""
    if PDL:
        wait_for_previous()
    token = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, E_PAD)
    x = tl.load(logits_ptr + token * stride_lt + e, mask=e < num_experts, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    left = tl.where(e < num_experts, p, -1.0)
    slots = tl.arange(0, K_PAD)
    top_w = tl.zeros([K_PAD], dtype=tl.float32)
    top_i = tl.zeros([K_PAD], dtype=tl.int32)
    for j in tl.static_range(K):
        best = tl.max(left, axis=0)
        idx = tl.min(tl.where(left == best, e, E_PAD), axis=0)
        top_w = tl.where(slots == j, best, top_w)
        top_i = tl.where(slots == j, idx, top_i)
        left = tl.where(e == idx, -1.0, left)
    if RENORMALIZE:
        top_w = top_w / tl.sum(top_w, axis=0)  # the padding slots hold 0
    tl.store(weights_ptr + token * K + slots, top_w, mask=slots < K)
    tl.store(ids_ptr + token * K + slots, top_i.to(tl.int64), mask=slots < K)


def moe_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch_ops.moe_topk` in one launch: (weights float32 [T, k], ids int64 [T, k])."""
    num_tokens, num_experts = router_logits.shape
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=router_logits.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int64, device=router_logits.device)
    if num_tokens > 0:
        if router_logits.stride(1) != 1:
            router_logits = router_logits.contiguous()
        _topk_kernel[(num_tokens,)](
            router_logits,
            weights,
            ids,
            num_experts,
            router_logits.stride(0),
            K=top_k,
            K_PAD=triton.next_power_of_2(top_k),
            E_PAD=triton.next_power_of_2(num_experts),
            RENORMALIZE=renormalize,
            num_warps=4,
            **launch_options(router_logits),
        )
    return weights, ids


def _align_small(flat: torch.Tensor, block_m: int, num_experts: int, size: int):
    dev = flat.device
    e_pad = triton.next_power_of_2(num_experts + 1)
    sorted_ids = torch.empty(size, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(size // block_m, dtype=torch.int32, device=dev)
    num_post = torch.empty(1, dtype=torch.int32, device=dev)
    shift = torch.empty(e_pad, dtype=torch.int32, device=dev)
    _align_small_kernel[(1,)](
        flat,
        sorted_ids,
        expert_ids,
        num_post,
        shift,
        flat.numel(),
        size,
        num_experts,
        triton.cdiv(flat.numel(), block_m),
        BLOCK_M=block_m,
        P_PAD=triton.next_power_of_2(flat.numel()),
        E_PAD=e_pad,
        FILL=1024,
        num_warps=8,
        **launch_options(flat),
    )
    return sorted_ids, expert_ids, num_post


@triton.jit
def _moe_gemm_kernel(
    a_ptr,  # [rows, K]: row p // A_DIV of pair p
    b_ptr,  # [E, N (x2 when GATED), K]
    c_ptr,  # [P, N]: row p
    weights_ptr,  # float32 [P] (MUL_WEIGHT)
    sorted_ids_ptr,  # int32 [S]
    expert_ids_ptr,  # int32 [S / BLOCK_M]
    num_post_ptr,  # int32 [1]
    N,
    K,
    num_pairs,
    stride_am,
    stride_be,
    stride_bn,
    stride_cm,
    A_DIV: tl.constexpr,  # k for GEMM 1 (a token's row serves its k pairs), 1 for GEMM 2
    GATED: tl.constexpr,  # B holds gate rows [0, N) and up rows [N, 2N): write silu(gate) * up
    MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    pid = tl.program_id(0)
    num_m = tl.cdiv(tl.load(num_post_ptr), BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    if first_m >= num_m:  # a block past the padded pairs (the grid is sized for the worst case)
        return
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    if pid_n >= num_n:  # the last group of M blocks is short: its surplus programs have no tile
        return

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + rows)
    valid = pair < num_pairs
    a_rows = a_ptr + (pair // A_DIV).to(tl.int64)[:, None] * stride_am
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    b_rows = b_ptr + expert * stride_be + offs_n[:, None] * stride_bn
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_valid = k < K
        a = tl.load(a_rows + k[None, :], mask=valid[:, None] & k_valid[None, :], other=0.0)
        b_mask = n_valid[:, None] & k_valid[None, :]
        b = tl.load(b_rows + k[None, :], mask=b_mask, other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
        if GATED:
            b_up = tl.load(b_rows + N * stride_bn + k[None, :], mask=b_mask, other=0.0)
            acc_up += tl.dot(a, tl.trans(b_up), input_precision=DOT_PRECISION)
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_WEIGHT:
        acc = acc * tl.load(weights_ptr + pair, mask=valid, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_valid[None, :])


def _gemm(a, b, c, weights, aligned, *, a_div: int, gated: bool, config: MoeConfig) -> None:
    sorted_ids, expert_ids, num_post = aligned
    n = c.shape[1]
    k = a.shape[1]
    grid = (triton.cdiv(sorted_ids.numel(), config.block_m) * triton.cdiv(n, config.block_n),)
    _moe_gemm_kernel[grid](
        a,
        b,
        c,
        weights if weights is not None else c,
        sorted_ids,
        expert_ids,
        num_post,
        n,
        k,
        c.shape[0],
        a.stride(0),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        A_DIV=a_div,
        GATED=gated,
        MUL_WEIGHT=weights is not None,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=config.group_m,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",  # fp32 stays exact; 16-bit ignores it
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **launch_options(a),
    )


def fused_moe(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # float32 [T, k]
    topk_ids: torch.Tensor,  # int64 [T, k]
    config: MoeConfig | None = None,
) -> torch.Tensor:  # [T, H]
    num_tokens, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter, top_k = two_inter // 2, topk_ids.shape[1]
    if x.stride(1) != 1:
        x = x.contiguous()
    if num_tokens == 0:
        return torch.zeros_like(x)
    config = config or moe_config(num_tokens, num_experts, inter, hidden, x.device)
    aligned = moe_align_block_size(topk_ids, config.block_m, num_experts)
    num_pairs = num_tokens * top_k
    h = torch.empty((num_pairs, inter), dtype=x.dtype, device=x.device)
    _gemm(x, w13, h, None, aligned, a_div=top_k, gated=True, config=config)
    out = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    weights = topk_weights.reshape(-1).float().contiguous()
    _gemm(h, w2, out, weights, aligned, a_div=1, gated=False, config=config)
    return out.view(num_tokens, top_k, hidden).sum(dim=1)


__all__ = ["MoeConfig", "fused_moe", "moe_align_block_size", "moe_config", "moe_topk"]
