"""KV-cache groups: a model's attention layers grouped by what of the context they keep.

A model whose layers all attend the same way (Llama, Qwen; also Phi-3 and Mistral, whose every layer is
windowed) has one group and the paged cache as it always was: one pool, one block table per sequence.

A hybrid model (Gemma 2 and 3: sliding-window layers interleaved with global ones) has two:

    group 0  full      the global layers: a sequence keeps a block for every `block_size` tokens
    group 1  sliding   the window-W layers: a sequence keeps only the blocks a query can still see; the
                       blocks wholly before the window are returned to the pool (BlockManager)

Each group has its own pool of blocks, sized by the bytes of its own layers, so a sliding block costs
only the sliding layers' bytes. The global group bounds the context; the sliding group needs at most
about W / block_size blocks per running sequence plus one step's chunk (`sliding_demand`), so the memory
budget goes to the global group but for that (`split_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine_service.core.model_config import SLIDING


@dataclass(frozen=True)
class KVCacheGroups:
    """How a hybrid model's layers split: the window of the sliding layers and which layers are which.
    None stands for a model with one group (kv_cache_groups)."""

    sliding_window: int
    sliding_layers: tuple[int, ...]  # layer indices of group 1
    full_layers: tuple[int, ...]  # layer indices of group 0

    @property
    def num_layers(self) -> int:
        return len(self.sliding_layers) + len(self.full_layers)


def kv_cache_groups(
    layer_types: tuple[str, ...] | None, sliding_window: int | None, honours_sliding_window: bool
) -> KVCacheGroups | None:
    """The groups of a model whose layers mix windowed and global attention; None for one kind."""
    if not (layer_types and sliding_window and honours_sliding_window):
        return None
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == SLIDING)
    full = tuple(i for i, kind in enumerate(layer_types) if kind != SLIDING)
    if not sliding or not full:
        return None
    return KVCacheGroups(int(sliding_window), sliding, full)


def sliding_demand(window: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """Blocks the sliding group can hold at once, at most: a sequence scheduled `n` tokens from position s
    keeps the blocks of positions s - W + 1 .. s + n - 1, at most (n + W - 2) // block_size + 2 of them
    (one more than its share of the window, since the window's start rarely falls on a block's start);
    summed over the batch, the chunks add up to the step's token budget."""
    return -(-max_num_batched_tokens // block_size) + max_num_seqs * (-(-window // block_size) + 2)


def split_blocks(total_layer_blocks: int, groups: KVCacheGroups, demand: int) -> tuple[int, int]:
    """(global blocks, sliding blocks) out of a budget of `total_layer_blocks` single-layer blocks.

    The sliding group never holds more blocks than the global group (it keeps a subset of the same
    positions), so an even split is the most it can use; below `demand` it gets `demand`, and the global
    group every single-layer block left."""
    num_full, num_sliding = len(groups.full_layers), len(groups.sliding_layers)
    even = total_layer_blocks // groups.num_layers
    if demand >= even:
        return even, even
    return (total_layer_blocks - demand * num_sliding) // num_full, demand
