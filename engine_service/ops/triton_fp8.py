"""FP8 (e4m3) GEMMs for the CUDA path. Same contract as `torch_ops.fp8_linear`.

    decode (<= GEMV_MAX_ROWS rows, 16-bit activations)
                 the Triton GEMV with fp8 weights (W8A16): half the weight bytes, no activation quantization

    activations  quantized here each call: per token (dynamic: a row's scale maps its largest |x| to 448),
                 per token and 1 x bk group for block weights, or with the checkpoint's static scale
    per-row weight scales (per-tensor and per-channel checkpoints, --quantization fp8)
                 torch._scaled_mm (cuBLASLt on sm_89+) with row-wise scales: scale_a [M, 1], scale_b [1, N];
                 its row-wise mode writes bf16 only, so other model dtypes go through bf16
    block weight scales (weight_block_size, e.g. 128 x 128: Qwen3-FP8, DeepSeek-V3)
                 the Triton kernel below: C = sum over k-blocks of (A_q B_q^T) a_scale[m, kb] b_scale[nb, kb]

Launch shapes of the block GEMM come from `block_gemm_config` (a table by card and M, with a default).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_gemv import gemv
from engine_service.ops.triton_pdl import launch_options, wait_for_previous

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
GEMV_MAX_ROWS = 8  # decode batches up to here: weights streamed by the GEMV (as dispatch.linear does)
_MIN_SCALE = 1e-12  # an all-zero row still gets a finite scale


@triton.jit
def _quant_kernel(
    x_ptr,  # [M, K]
    q_ptr,  # fp8 [M, K]
    scale_ptr,  # float32 [M, G]: the scale of each (row, group); read instead when STATIC
    stride_xm,
    stride_qm,
    K,
    GROUP: tl.constexpr,  # elements per scale (K for per-token)
    NUM_GROUPS: tl.constexpr,
    BLOCK: tl.constexpr,
    STATIC: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per (row, group): its scale (max |x| / 448, or the static one), then x / scale in fp8."""
    if PDL:
        wait_for_previous()
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    start = group * GROUP
    x_row = x_ptr + row * stride_xm
    if STATIC:
        scale = tl.load(scale_ptr)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, GROUP, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            mask = (offs < K) & (off + tl.arange(0, BLOCK) < GROUP)
            x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0) / 448.0, 1e-12)
        tl.store(scale_ptr + row * NUM_GROUPS + group, scale)
    inv = 1.0 / scale
    for off in range(0, GROUP, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = (offs < K) & (off + tl.arange(0, BLOCK) < GROUP)
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.clamp(x * inv, -448.0, 448.0)
        tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def quantize_activations(
    x: torch.Tensor, group: int | None = None, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], float32 scales [M, ceil(K / group)]); group None: one scale per row. With a
    static scale (float32 []), every row uses it and the scales returned are it, expanded to [M, 1]."""
    m, k = x.shape
    group = group or k
    num_groups = triton.cdiv(k, group)
    q = torch.empty((m, k), dtype=FP8, device=x.device)
    if static_scale is not None:
        scales = static_scale.reshape(1, 1).expand(m, 1)
    else:
        scales = torch.empty((m, num_groups), dtype=torch.float32, device=x.device)
    if m > 0:
        _quant_kernel[(m, num_groups)](
            x,
            q,
            static_scale if static_scale is not None else scales,
            x.stride(0),
            q.stride(0),
            k,
            GROUP=group,
            NUM_GROUPS=num_groups,
            BLOCK=min(1024, triton.next_power_of_2(group)),
            STATIC=static_scale is not None,
            num_warps=4,
            **launch_options(x),
        )
    return q, scales


@triton.jit
def _block_gemm_kernel(
    a_ptr,  # fp8 [M, K]
    a_scale_ptr,  # float32 [M, KB]
    b_ptr,  # fp8 [N, K]
    b_scale_ptr,  # float32 [NB, KB]
    bias_ptr,  # [N] (HAS_BIAS)
    c_ptr,  # [M, N]
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    stride_asm,
    stride_bsn,
    SCALE_N: tl.constexpr,  # weight rows per scale (bn)
    SCALE_K: tl.constexpr,  # weight columns per scale (bk); BLOCK_K divides it
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per [BLOCK_M, BLOCK_N] tile of C, grouped GROUP_M tiles of M at a time (L2 reuse of B)."""
    if PDL:
        wait_for_previous()
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_valid, n_valid = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn
    b_scale_rows = b_scale_ptr + (offs_n // SCALE_N) * stride_bsn  # [BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_valid = k < K
        a = tl.load(a_rows + k[None, :], mask=m_valid[:, None] & k_valid[None, :], other=0.0)
        b = tl.load(b_rows + k[None, :], mask=n_valid[:, None] & k_valid[None, :], other=0.0)
        kb = k0 // SCALE_K
        a_s = tl.load(a_scale_ptr + offs_m * stride_asm + kb, mask=m_valid, other=0.0)
        b_s = tl.load(b_scale_rows + kb, mask=n_valid, other=0.0)
        acc += tl.dot(a, tl.trans(b)) * a_s[:, None] * b_s[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_valid, other=0.0).to(tl.float32)[None, :]
    c = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


# Launch shapes of the block GEMM by the largest M they serve: (BLOCK_M, BLOCK_N, GROUP_M, warps, stages).
# Decode (small M) is bound by streaming B: narrow N tiles give every SM programs; prefill by the dots.
# A first table for Hopper (H100 / H200: the same SMs), to be tuned per shape on the card; other cards
# use the same shapes until measured.
_BLOCK_GEMM_CONFIGS: dict[str, list[tuple[int, tuple[int, int, int, int, int]]]] = {
    "default": [
        (16, (16, 64, 1, 4, 4)),
        (64, (32, 64, 1, 4, 4)),
        (256, (64, 128, 8, 4, 3)),
        (1 << 62, (128, 128, 8, 8, 3)),
    ],
}


@functools.cache
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index) if torch.cuda.is_available() else "cpu"


def block_gemm_config(m: int, device: torch.device) -> tuple[int, int, int, int, int]:
    name = _device_name(device.index or 0) if device.type == "cuda" else "cpu"
    table = next((t for key, t in _BLOCK_GEMM_CONFIGS.items() if key != "default" and key in name), None)
    for bound, config in table or _BLOCK_GEMM_CONFIGS["default"]:
        if m <= bound:
            return config
    raise AssertionError("the last bound covers every M")


def block_gemm(
    a: torch.Tensor,  # fp8 [M, K]
    a_scale: torch.Tensor,  # float32 [M, ceil(K / bk)]
    b: torch.Tensor,  # fp8 [N, K]
    b_scale: torch.Tensor,  # float32 [ceil(N / bn), ceil(K / bk)]
    block: tuple[int, int],
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:  # [M, N]
    m, k = a.shape
    n = b.shape[0]
    bn, bk = block
    block_m, block_n, group_m, warps, stages = config or block_gemm_config(m, a.device)
    block_k = min(bk, 128)
    if bk % block_k:
        raise ValueError(f"the weight block's {bk} columns are not a multiple of {block_k}")
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0:
        return c
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _block_gemm_kernel[grid](
        a,
        a_scale,
        b,
        b_scale,
        bias if bias is not None else c,
        c,
        m,
        n,
        k,
        a.stride(0),
        b.stride(0),
        c.stride(0),
        a_scale.stride(0),
        b_scale.stride(0),
        SCALE_N=bn,
        SCALE_K=bk,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        num_warps=warps,
        num_stages=stages,
        **launch_options(a),
    )
    return c


def fp8_linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # fp8 [N, K]
    weight_scale: torch.Tensor,  # float32 [N] (per row) or [ceil(N/bn), ceil(K/bk)] (block)
    input_scale: torch.Tensor | None,  # float32 []: static activation scale; None: dynamic
    block: tuple[int, int] | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N]
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if x2.shape[0] <= GEMV_MAX_ROWS and x.dtype in (torch.bfloat16, torch.float16):
        # Decode: stream the e4m3 weights through the GEMV, activations left in 16 bits (W8A16).
        out = gemv(x2, weight, bias, weight_scale=weight_scale, block=block)
    elif block is not None:
        q, scales = quantize_activations(x2, block[1])
        out = block_gemm(q, scales, weight, weight_scale, block, x.dtype, bias)
    else:
        out = _scaled_mm_rowwise(x2, weight, weight_scale, input_scale, bias)
    return out.view(*lead, weight.shape[0])


def _scaled_mm_rowwise(x, weight, weight_scale, input_scale, bias) -> torch.Tensor:
    q, scales = quantize_activations(x, None, input_scale)
    if scales.stride(0) == 0:  # the static scale, expanded: _scaled_mm wants a real [M, 1] tensor
        scales = scales.contiguous()
    out = torch._scaled_mm(
        q,
        weight.t(),  # [K, N], column-major: the layout cuBLASLt's fp8 path needs
        scale_a=scales,
        scale_b=weight_scale.view(1, -1),
        bias=bias.to(torch.bfloat16) if bias is not None else None,
        out_dtype=torch.bfloat16,  # row-wise scaling writes bf16 only
    )
    return out if x.dtype == torch.bfloat16 else out.to(x.dtype)


__all__ = ["block_gemm", "block_gemm_config", "fp8_linear", "quantize_activations"]
