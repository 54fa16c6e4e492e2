"""Gated activations for MLPs (Triton): `torch_ops.silu_and_mul` and `torch_ops.gelu_tanh_and_mul` in fp32
math with one rounding."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    out_ptr,  # [T, I]
    x_ptr,  # [T, 2I]: gate then up
    stride_ot,
    stride_xt,
    INTERMEDIATE: tl.constexpr,
    BLOCK: tl.constexpr,
    GELU: tl.constexpr,  # gelu (tanh approximation) instead of silu
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTERMEDIATE
    gate = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_xt + INTERMEDIATE + offs, mask=mask, other=0.0).to(tl.float32)
    if GELU:  # 0.5 g (1 + tanh(y)) = g * sigmoid(2y), y = sqrt(2/pi) (g + 0.044715 g^3)
        y = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        out = gate * tl.sigmoid(2.0 * y) * up
    else:
        out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_ot + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2I] (gate then up) -> silu(gate) * up: [..., I]."""
    return _gated(x, gelu=False)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2I] (gate then up) -> gelu_tanh(gate) * up: [..., I]."""
    return _gated(x, gelu=True)


def _gated(x: torch.Tensor, gelu: bool) -> torch.Tensor:
    intermediate = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], intermediate), dtype=x.dtype, device=x.device)
    if x2.shape[0] > 0:
        block = min(_BLOCK, triton.next_power_of_2(intermediate))
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(intermediate, block))](
            out,
            x2,
            out.stride(0),
            x2.stride(0),
            INTERMEDIATE=intermediate,
            BLOCK=block,
            GELU=gelu,
            num_warps=4,
            **launch_options(x2),
        )
    return out.view(*x.shape[:-1], intermediate)
