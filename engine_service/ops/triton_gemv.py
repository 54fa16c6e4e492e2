"""y = x @ W^T + b for a few rows (decode, M <= 16), W [N, K] row-major (nn.Linear layout), in Triton.

At small M the product is a weight stream: every byte of W is read once, and the time is W's bytes over
the memory bandwidth that the bytes in flight per SM can sustain. Each program owns BLOCK_N rows of W (output
columns) and one of split_k contiguous K ranges; it walks its range in BLOCK_K chunks through a pipelined
(num_stages) `tl.dot(W_tile, x_tile^T)`: the dot is only there so that Triton streams the W tiles with async
copies into shared memory, its 16-row minimum pads M for free (the padded x rows are masked, never read).

Split-K without a second kernel or a memset: each split writes its fp32 partial [M, BLOCK_N] to a workspace
and bumps a per-column-block counter; the program that arrives last sums the partials in split order (so the
result does not depend on arrival order), adds the bias, stores y, and puts the counter back to 0 for the
next call. The workspace is allocated once per (device, size) and kept, so a CUDA graph can hold its address;
calls that share it must be ordered (one stream per device, as the decode step runs). Warm a shape up
before capturing a graph, so that the workspace is not allocated inside the capture.

FP8 weights (W8A16 decode): an e4m3 W streams half the bytes; each tile is widened to x's dtype before the
dot and the product scaled by W's scales: per output row at the end (per-tensor and per-channel
checkpoints), or per (row block, K block) as each chunk is added (block-quantized checkpoints, BLOCK_K
dividing the scale block). The activations stay in 16 bits: no quantization step at decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous

BLOCK_M = 16  # the smallest tl.dot tile: M <= 16 rows fit in one


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # rows of W (output columns) per program; >= 16 (a dot dimension)
    block_k: int  # K chunk per pipeline stage
    split_k: int  # programs along K per column block (1: no workspace, plain store)
    num_warps: int = 4
    num_stages: int = 4


# Configs by (N, K) for the decode shapes of llama-8b (TP=1, TP=2) and llama-1b: the best of
# `benchmarks/gemv.py --sweep` on an H200 (132 SMs, triton 3.6), bf16, the same or within 0.2 us at M = 1..8
# (the tile is 16 rows whatever M is, and the W stream dominates). Many shallow stages beat few deep ones,
# and split-K only pays where N gives fewer than about a third as many column blocks as SMs (1b down).
_T = GemvConfig
CONFIGS: dict[tuple[int, int], GemvConfig] = {
    (3072, 4096): _T(64, 128, 1, 4, 6),  # 8b TP=2 qkv
    (4096, 2048): _T(64, 128, 1, 4, 6),  # 8b TP=2 o
    (14336, 4096): _T(128, 128, 1, 4, 5),  # 8b TP=2 gate_up
    (4096, 7168): _T(64, 256, 1, 4, 5),  # 8b TP=2 down
    (6144, 4096): _T(64, 128, 1, 4, 6),  # 8b TP=1 qkv
    (4096, 4096): _T(64, 128, 1, 4, 6),  # 8b TP=1 o
    (28672, 4096): _T(64, 128, 1, 4, 6),  # 8b TP=1 gate_up
    (4096, 14336): _T(64, 256, 1, 4, 5),  # 8b TP=1 down
    (3072, 2048): _T(64, 128, 1, 4, 6),  # 1b qkv
    (2048, 2048): _T(64, 128, 1, 4, 6),  # 1b o
    (16384, 2048): _T(128, 128, 1, 4, 5),  # 1b gate_up
    (2048, 8192): _T(64, 128, 4, 4, 6),  # 1b down
}


def _heuristic(n: int, k: int, element_size: int, num_sms: int) -> GemvConfig:
    """The table's common entry: 64 columns x 128 K per stage, 6 stages in bf16 (~120 KiB of shared
    memory with the x tile; fp32 takes 4); split K only when there are fewer than num_sms / 3 column
    blocks, to about one program per SM, keeping at least two chunks per split."""
    block_n, block_k = 64, 128
    blocks = triton.cdiv(n, block_n)
    split = 1
    if blocks < num_sms // 3:
        while blocks * split * 2 <= num_sms and k >= 2 * block_k * (2 * split):
            split *= 2
    return GemvConfig(block_n, block_k, split, 4, 6 if element_size == 2 else 4)  # fp32: 6 spill


def choose_config(n: int, k: int, m: int, element_size: int = 2, num_sms: int = 132) -> GemvConfig:
    """The launch config for an [m, k] x [n, k]^T product (m enters only through the table's key today)."""
    del m  # kept in the signature: a measured table may want a separate M > 8 entry
    if element_size == 2 and (n, k) in CONFIGS:  # measured in bf16
        return CONFIGS[(n, k)]
    return _heuristic(n, k, element_size, num_sms)


@triton.jit
def _gemv_kernel(
    out_ptr,  # [M, N]
    x_ptr,  # [M, K]
    w_ptr,  # [N, K]
    bias_ptr,  # [N] (unused without HAS_BIAS)
    scale_ptr,  # float32 [N] (SCALE == 1) or [cdiv(N, SCALE_N), cdiv(K, SCALE_K)] (SCALE == 2)
    partial_ptr,  # [split_k, M, N] fp32 (unused without SPLIT)
    counter_ptr,  # [cdiv(N, BLOCK_N)] int32, 0 between calls (unused without SPLIT)
    M,
    N,
    K,
    split_k,  # programs along K (a runtime value: split counts share one compiled kernel)
    k_per_split,  # a multiple of BLOCK_K: split starts stay chunk-aligned, so loads stay vectorized
    stride_om,
    stride_xm,
    stride_wn,
    stride_sn,
    HAS_BIAS: tl.constexpr,
    SCALE: tl.constexpr,  # 0: W in x's dtype; 1: fp8 W, a scale per row; 2: fp8 W, block scales
    SCALE_N: tl.constexpr,
    SCALE_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,  # split_k > 1
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PDL: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), split_k)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if PDL:
        wait_for_previous()
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = pid_k * k_per_split + tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # y^T for this column block
    for k in range(0, k_per_split, BLOCK_K):
        k_mask = offs_k + k < K  # only against K: the next split's chunks start past this range's end
        w = tl.load(w_ptrs + k, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(x_ptrs + k, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if DOT_FP32:
            w, x = w.to(tl.float32), x.to(tl.float32)
        if SCALE != 0:
            w = w.to(x.dtype)
        if SCALE == 2:  # this chunk's (row block, K block) scales, one per output row
            kb = (pid_k * k_per_split + k) // SCALE_K
            s = tl.load(scale_ptr + (offs_n // SCALE_N) * stride_sn + kb, mask=n_mask, other=0.0)
            acc += tl.dot(w, tl.trans(x), input_precision=DOT_PRECISION) * s[:, None]
        else:
            acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)
    if SCALE == 1:
        acc = acc * tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)[:, None]

    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    out_mask = n_mask[:, None] & m_mask[None, :]
    if not SPLIT:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part_ptrs = partial_ptr + offs_m[None, :] * N + offs_n[:, None]  # split s at + s * M * N
        tl.store(part_ptrs + pid_k * M * N, acc, mask=out_mask)
        # Every thread's partial is stored before one thread publishes it (the release covers what the
        # barrier ordered before it); the acquire makes the other splits' partials visible to the last one.
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + pid_n, 1, sem="acq_rel")
        if arrived == split_k - 1:
            total = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for s in range(split_k):  # split order, not arrival order: the same sum on every call
                total += tl.load(part_ptrs + s * M * N, mask=out_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(counter_ptr + pid_n, 0)  # ready for the next call: no memset


# (device, partial floats, counters) -> (partials, counters). Never freed: captured graphs hold the addresses.
_WORKSPACES: dict[tuple[torch.device, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, partials: int, counters: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device, partials, counters)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (
            torch.empty(partials, dtype=torch.float32, device=device),
            torch.zeros(counters, dtype=torch.int32, device=device),  # the kernel leaves them at 0
        )
    return _WORKSPACES[key]


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: GemvConfig | None = None,
    weight_scale: torch.Tensor | None = None,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:
    """x: [M, K] (M <= 16), weight: [N, K], bias: [N] or None -> x @ weight^T + bias: [M, N] in x's dtype.

    fp32 accumulation; `config` overrides the table (for sweeps and tests). An fp8 weight comes with its
    `weight_scale`: float32 [N], or [cdiv(N, bn), cdiv(K, bk)] with `block` (bn, bk)."""
    m, k = x.shape
    n = weight.shape[0]
    fp8 = weight.dtype == torch.float8_e4m3fn
    if (
        weight.shape[1] != k
        or m > BLOCK_M
        or (x.dtype != weight.dtype and not fp8)
        or fp8 != (weight_scale is not None)
    ):
        raise ValueError(f"gemv: x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    cfg = config or choose_config(n, k, m, x.element_size(), _num_sms(x.device))
    if block is not None and block[1] % cfg.block_k:  # a K chunk must lie inside one scale block
        cfg = GemvConfig(cfg.block_n, block[1], cfg.split_k, cfg.num_warps, cfg.num_stages)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, k_per_split)  # a split past K would only add an empty program
    blocks = triton.cdiv(n, cfg.block_n)
    partials, counters = _workspace(x.device, split * m * n, blocks) if split > 1 else (out, out)
    _gemv_kernel[(blocks, split)](
        out,
        x,
        weight,
        bias if bias is not None else out,
        weight_scale if weight_scale is not None else out,
        partials,
        counters,
        m,
        n,
        k,
        split,
        k_per_split,
        out.stride(0),
        x.stride(0),
        weight.stride(0),
        weight_scale.stride(0) if block is not None else 0,
        HAS_BIAS=bias is not None,
        SCALE=0 if not fp8 else (2 if block is not None else 1),
        SCALE_N=block[0] if block is not None else 1,
        SCALE_K=block[1] if block is not None else 1,
        BLOCK_M=BLOCK_M,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT=split > 1,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        # Triton's interpreter (CPU tensors) hands bf16 dot operands to numpy as raw bits: fp32 there.
        DOT_FP32=x.dtype == torch.bfloat16 and not x.is_cuda,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **launch_options(x),
    )
    return out
