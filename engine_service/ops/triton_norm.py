"""RMSNorm and residual-add + RMSNorm (Triton), one row per program, fp32 math.

Same results as `torch_ops.rms_norm` / `torch_ops.fused_add_rms_norm`. `fused_add_rms_norm` works in place
on `residual` (it becomes x + residual, rounded to the model dtype as the torch path rounds it) and returns a
new tensor for the normed output; callers must use the returned pair on either path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous


@triton.jit
def _rms_norm_kernel(
    out_ptr,  # [T, H]
    x_ptr,  # [T, H]
    residual_ptr,  # [T, H]; read and overwritten with x + residual when ADD_RESIDUAL
    weight_ptr,  # [H]
    eps,
    stride_ot,
    stride_xt,
    stride_rt,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    x = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # now: its round trip overlaps x's
    if ADD_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_rt + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # round like the torch path
        tl.store(residual_ptr + row * stride_rt + offs, x, mask=mask)
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / HIDDEN + eps)
    tl.store(out_ptr + row * stride_ot + offs, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)  # [T, H]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    r2 = (
        x2 if residual is None else residual.view(-1, hidden)
    )  # a view: the in-place add must land in residual
    if r2.stride(-1) != 1:
        raise ValueError("fused_add_rms_norm needs a residual with a contiguous last dimension")
    block = triton.next_power_of_2(hidden)
    if x2.shape[0] > 0:
        _rms_norm_kernel[(x2.shape[0],)](
            out,
            x2,
            r2,
            weight,
            eps,
            out.stride(0),
            x2.stride(0),
            r2.stride(0),
            HIDDEN=hidden,
            BLOCK=block,
            ADD_RESIDUAL=residual is not None,
            num_warps=min(16, max(1, block // 512)),
            **launch_options(x2),
        )
    return out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., H] -> [..., H] in x's dtype."""
    return _launch(x, None, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual <- x + residual (in place); returns (rms_norm(residual), residual)."""
    return _launch(x, residual, weight, eps), residual
