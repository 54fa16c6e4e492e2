"""Weight prefetch for decode: each small-batch product asks the L2 for the next product's weight.

A decode step at batch 1 streams every weight once, and between two products run kernels that hardly
touch memory: the norms, rotary, attention over a short context, the all-reduce's wait for the other ranks.
DRAM idles through them. Chaining the products in the order a forward pass runs them

    layer i:  qkv ─▶ o ─▶ gate_up ─▶ down ─▶ layer i+1: qkv ─▶ ... ─▶ last down ─▶ LM head

lets the decode GEMV (ops/triton_gemv.py) of each one issue, once it has read its own weight, L2 prefetches
of the next one's first `max_bytes`, which arrive during the gap. Only the Triton GEMV path prefetches
(CUDA, 16-bit, at most GEMV_MAX_ROWS rows); larger batches are not gap-bound and ignore the chain.
"""

from __future__ import annotations

from torch import nn


def chain_weight_prefetch(products: list[nn.Module], max_bytes: int) -> int:
    """Give each module of `products` (in forward order) the next one's weight to prefetch, up to
    `max_bytes` of it; 0 clears the chain. Modules without a `prefetch` slot (the LM head) can only be
    prefetched. Returns the number of links set."""
    links = 0
    for current, following in zip(products, products[1:], strict=False):
        if not hasattr(current, "prefetch"):
            continue
        weight = following.weight
        nbytes = min(max_bytes, weight.numel() * weight.element_size())
        current.prefetch = (weight, nbytes) if nbytes > 0 and weight.is_contiguous() else None
        links += current.prefetch is not None
    if products and hasattr(products[-1], "prefetch"):
        products[-1].prefetch = None
    return links
