"""Mixture-of-experts MLP: a softmax router picks k experts per token; each is a SwiGLU MLP.

    x -> router logits [T, E] -> top-k (weights, ids) -> sum_j w_j * expert_{id_j}(x)  (+ shared expert)

All experts of a layer live in two stacked tensors, so one fused kernel serves them (ops.fused_moe):
    w13_weight  [E, 2 I/tp, H]   rows [0, I/tp): gate_proj (w1) of this rank's slice, then up_proj (w3)
    w2_weight   [E, H, I/tp]     down_proj (w2), this rank's columns
Tensor parallelism splits every expert's intermediate dimension, as a dense MLP's is (vLLM's TP for MoE):
each rank runs every expert on its slice and returns partial sums, which the next norm reduces. The router
and the shared expert's sigmoid gate are replicated.

Checkpoints store one tensor per expert (`mlp.experts.{e}.gate_proj.weight`, Mixtral's
`block_sparse_moe.experts.{e}.w1.weight`); `expert_target` maps those names onto the stacked tensors.
FP8 checkpoints (Qwen3-30B-A3B-FP8's 128x128 blocks, per-tensor or per-channel scales) give each expert
matrix an e4m3 weight and its `weight_scale` (`weight_scale_inv` renamed by the loader): the experts
dequantize each matrix to the model's dtype as soon as both halves have arrived, and run unquantized (the
fused kernel has no FP8 path yet; the attention's linears stay FP8). A static `input_scale` has no use then.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from engine_service.core.quant_config import QuantConfig
from engine_service.layers.linear import divide
from engine_service.layers.quantization.fp8 import dequantize
from engine_service.ops import dispatch as ops

_EXPERT = re.compile(
    r"^(?P<prefix>.*)\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)"
    r"\.(?P<tensor>weight|weight_scale|input_scale)$"
)
_WHICH = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2", "w1": "w1", "w2": "w2", "w3": "w3"}


def expert_target(name: str) -> tuple[str, tuple[int, str, str]] | None:
    """(our parameter, (expert, "w1" | "w2" | "w3", "weight" | "weight_scale" | "input_scale")) of a
    per-expert checkpoint tensor; None for other names."""
    m = _EXPERT.match(name)
    if m is None:
        return None
    which = _WHICH[m["proj"]]
    param = "w2_weight" if which == "w2" else "w13_weight"
    return f"{m['prefix']}.experts.{param}", (int(m["expert"]), which, m["tensor"])


class FusedMoE(nn.Module):
    """The experts of one layer, stacked (see the module doc); forward(x, weights, ids) -> [T, H].
    `quant`: the checkpoint's FP8 layout when its expert weights are FP8 (None: 16/32-bit experts)."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        tp_rank: int,
        tp_size: int,
        quant: QuantConfig | None = None,
    ):
        super().__init__()
        self.tp_rank = tp_rank
        self.inter = divide(intermediate_size, tp_size)
        self.w13_weight = nn.Parameter(
            torch.empty(num_experts, 2 * self.inter, hidden_size), requires_grad=False
        )
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.inter), requires_grad=False)
        self.w13_weight.weight_loader = self.weight_loader
        self.w2_weight.weight_loader = self.weight_loader
        self.fp8 = quant if quant is not None and not quant.online else None
        # FP8 halves (weight, weight_scale) of an expert matrix waiting for the other: (expert, which) -> ...
        self._pending: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: tuple[int, str, str]) -> None:
        expert, which, tensor = shard_id
        if tensor == "input_scale" and self.fp8 is not None:  # static activation scale: no use dequantized
            return
        if self.fp8 is not None:
            halves = self._pending.setdefault((expert, which), {})
            halves[tensor] = loaded[...]
            if len(halves) < 2:
                return
            del self._pending[(expert, which)]
            loaded = _dequantize(halves["weight"], halves["weight_scale"], self.fp8.weight_block)
        elif tensor != "weight":
            raise ValueError(f"expert {expert} {which} has a {tensor} but the checkpoint is not FP8")
        start = self.tp_rank * self.inter
        if which == "w2":  # [H, I]: this rank's columns
            param.data[expert].copy_(loaded.narrow(1, start, self.inter))
            return
        row = 0 if which == "w1" else self.inter
        param.data[expert, row : row + self.inter].copy_(loaded.narrow(0, start, self.inter))

    def process_weights_after_loading(self) -> None:
        if self._pending:
            (expert, which), halves = next(iter(self._pending.items()))
            missing = "weight_scale" if "weight" in halves else "weight"
            raise ValueError(f"the FP8 checkpoint lacks the {missing} of expert {expert} {which}")

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return ops.fused_moe(x, self.w13_weight, self.w2_weight, topk_weights, topk_ids)


class Router(nn.Module):
    """A replicated [out, H] projection without bias (the router, or the shared expert's gate)."""

    def __init__(self, out_features: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight)


class SparseMoeBlock(nn.Module):
    """Router + experts (+ Qwen2-MoE's shared expert, scaled by sigmoid(shared_expert_gate(x)))."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool,
        tp_rank: int = 0,
        tp_size: int = 1,
        shared_expert: nn.Module | None = None,
        quant: QuantConfig | None = None,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok {top_k} must be between 1 and num_experts {num_experts}")
        self.top_k, self.renormalize = top_k, renormalize
        self.gate = Router(num_experts, hidden_size)
        self.experts = FusedMoE(num_experts, hidden_size, intermediate_size, tp_rank, tp_size, quant)
        self.shared_expert = shared_expert
        self.shared_expert_gate = Router(1, hidden_size) if shared_expert is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H] (partial sums under TP)
        weights, ids = ops.moe_topk(self.gate(x), self.top_k, self.renormalize)
        out = self.experts(x, weights, ids)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


def _dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """float32 [N, K] of one expert matrix: e4m3 values times block scales, or a scale per row or tensor."""
    if block is None:
        scale = scale.reshape(-1).float().expand(weight.shape[0]) if scale.numel() == 1 else scale.reshape(-1)
    return dequantize(weight, scale, block)
