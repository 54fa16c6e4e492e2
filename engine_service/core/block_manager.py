"""The paged KV cache's bookkeeping: block ids, reference counts and the hash-chained prefix cache.

Pure Python, no torch. A block is in exactly one of three states:
    in use    ref_count > 0                     (held by one or more sequences)
    cached    ref_count == 0, has a hash        (reusable by a later prefix hit, evictable)
    free      ref_count == 0, no hash
Cached and free blocks sit together in one LRU queue; allocation pops from its front, evicting the
block's hash if it has one. A freed sequence returns its blocks tail first, so a prompt's tail blocks
are evicted before its head (which more requests are likely to share).

A full block is keyed by SHA-256(parent key, its token ids, salt): equal keys mean equal prefixes.
A cryptographic hash, because a key collision would hand one request another's cached KV: Python's
hash() of a tuple of ints is fast but easy to collide on purpose, so a tenant could read (or poison)
another's cached prompt. Partial blocks are never shared.

KV-cache events (off until `start_events`): a block whose key enters the cache appends
("stored", key, parent key, token ids), a cached block reused for other tokens ("removed", key), a reset
("cleared",). The engine loop takes them once per step (`take_events`) for the event stream routers
index (engine/kv_event_hub.py): one append per full block, nothing per token.

KV-cache groups (core/kv_cache_groups.py). The blocks above are a model's only group, or the global
(full-attention) group of a hybrid model such as Gemma 2/3. A hybrid model's sliding-window layers are a
second group with a pool of their own (`sliding`, core/sliding_blocks.py; its blocks cost only the sliding
layers' bytes): every allocation and free is done in both, admission and preemption need room in both
(can_allocate), and a sequence keeps only its window's blocks there. The two groups share one hash chain:
the global group computes a block's key, the sliding group files the same key for its block of those
positions. A prefix hit is used up to where the sliding group still holds the window before it
(get_computed_blocks), never beyond. Only the global group emits KV-cache events and counts in the stats'
block numbers; `usage` is the fuller group's.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from engine_service.core.sequence import Sequence
from engine_service.core.sliding_blocks import SlidingBlocks


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None  # prefix-cache key when the block is full and registered


def block_key(parent: bytes | None, token_ids: Seq[int], salt: str | None) -> bytes:
    """32 bytes naming the prefix that ends with this block (the salt separates tenants)."""
    h = hashlib.sha256(parent or b"\0" * 32)
    h.update(array("q", token_ids).tobytes())
    if salt is not None:
        h.update(salt.encode())
    return h.digest()


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        sliding: SlidingBlocks | None = None,
    ):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token, got {num_blocks} x {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._lru: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # key -> block id
        self._tables: dict[str, list[int]] = {}  # seq id -> block ids, in token order
        self._keys: dict[str, list[bytes]] = {}  # seq id -> keys of its leading full blocks
        self.num_query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.num_hit_tokens = 0  # of which were found
        self.events: list[tuple] | None = None  # KV-cache events since the last take_events; None: off
        self.sliding = sliding  # a hybrid model's sliding-window group; None: one group
        self._sliding_hits: tuple[str, int, list[int]] = ("", 0, [])  # the last lookup's (seq, h, ids)

    # ---- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take: free ones and evictable cached ones."""
        return len(self._lru)

    @property
    def usage(self) -> float:
        usage = 1.0 - len(self._lru) / self.num_blocks
        return usage if self.sliding is None else max(usage, self.sliding.usage)

    def block_table(self, seq: Sequence) -> list[int]:
        return self._tables.get(seq.seq_id, [])

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """The longest cached prefix of `seq`, in blocks; always leaves at least its last token to compute."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        keys: list[bytes] = []
        for key in self._full_block_keys(seq, max_blocks):  # hashed lazily: the first miss ends the walk
            block_id = self._cached.get(key)
            if block_id is None:
                break
            hits.append(block_id)
            keys.append(key)
        if self.sliding is not None and hits:
            # Only as far as the sliding group still holds the window before the hit point; its blocks
            # are kept for can_allocate and allocate, which the scheduler calls next for this sequence.
            h, sliding_ids = self.sliding.hits(keys)
            self._sliding_hits = (seq.seq_id, h, sliding_ids)
            del hits[h:]
        return hits

    def can_allocate(self, seq: Sequence, num_new_tokens: int, computed_blocks: Seq[int] = ()) -> bool:
        if not computed_blocks:  # the common case (a running sequence): is there room for its new tokens?
            start = seq.num_computed_tokens
            need = -(-(start + num_new_tokens) // self.block_size)
            if need - len(self._tables.get(seq.seq_id, ())) > len(self._lru):
                return False
            sliding = self.sliding
            return sliding is None or sliding.can_allocate(seq.seq_id, start, start + num_new_tokens)
        have = len(self._tables.get(seq.seq_id, ())) + len(computed_blocks)
        num_computed = seq.num_computed_tokens + len(computed_blocks) * self.block_size
        need = self.blocks_for(num_computed + num_new_tokens) - have
        revived = sum(1 for b in computed_blocks if self.blocks[b].ref_count == 0)
        if need > len(self._lru) - revived:
            return False
        if self.sliding is None:
            return True
        hit_ids = self._sliding_hit_ids(seq, computed_blocks)
        return self.sliding.can_allocate(seq.seq_id, num_computed, num_computed + num_new_tokens, hit_ids)

    # ---- actions -------------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new_tokens: int, computed_blocks: Seq[int] = ()) -> list[int]:
        """Give `seq` blocks for `num_new_tokens` more tokens (after taking `computed_blocks` as its prefix);
        returns the ids of the blocks it took from the free pool, in table order (what the model runner's
        copy of the table lacks; `computed_blocks` come before them).

        Full blocks among the tokens computed this step are registered in the prefix cache at once: the
        forward pass writes every new token's KV before any attention reads it, so a sequence scheduled
        later in the same step may already share them.

        A running sequence's table always covers its computed tokens, and its keys always cover its full
        blocks of computed and resolved tokens (see register_computed). So one new token at position p with
        0 < p % block_size < block_size - 1 changes nothing here: it lands in the last block and does not
        fill it. The scheduler skips the call then (most decode steps).
        """
        table = self._tables.setdefault(seq.seq_id, [])
        if computed_blocks:
            assert not table and seq.num_computed_tokens == 0, (
                "prefix hits only for a sequence with no blocks"
            )
            for block_id in computed_blocks:
                self._take(block_id)
                table.append(block_id)
            seq.num_computed_tokens = len(computed_blocks) * self.block_size
            self._keys[seq.seq_id] = [self.blocks[b].key for b in computed_blocks]  # hits are cached blocks
        num_tokens = seq.num_computed_tokens + num_new_tokens
        num_before = len(table)
        while len(table) < self.blocks_for(num_tokens):
            table.append(self._pop_free())
        if self.sliding is not None:  # before register_computed, which keys the sliding blocks too
            hit_ids = self._sliding_hit_ids(seq, computed_blocks) if computed_blocks else ()
            self.sliding.allocate(seq.seq_id, seq.num_computed_tokens, num_tokens, hit_ids)
        self.register_computed(seq, num_tokens)
        return table[num_before:]

    def register_computed(self, seq: Sequence, num_computed: int | None = None) -> None:
        """Key the full blocks among `seq`'s computed tokens whose ids are all known (no placeholder).

        Called whenever either count grows, so a new key can only come from a token that completes a
        block; callers skip the call otherwise (Scheduler.update_from_output, and allocate's callers).
        """
        if not self.enable_prefix_caching:
            return
        computed = seq.num_computed_tokens if num_computed is None else num_computed
        num_full = min(computed, seq.num_resolved_tokens) // self.block_size
        if num_full > len(self._keys.get(seq.seq_id, ())):
            self._register_full_blocks(seq, num_full)

    def record_lookup(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.num_query_tokens += num_prompt_tokens
        self.num_hit_tokens += num_hit_tokens

    def free(self, seq: Sequence) -> None:
        """Release `seq`'s blocks, tail first, so that its tail is evicted before its shared head."""
        for block_id in reversed(self._tables.pop(seq.seq_id, [])):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._lru[block_id] = None
        self._keys.pop(seq.seq_id, None)
        if self.sliding is not None:
            self.sliding.free(seq.seq_id)

    def reset_prefix_cache(self) -> None:
        for block_id in self._cached.values():
            self.blocks[block_id].key = None
        self._cached.clear()
        if self.sliding is not None:
            self.sliding.reset_prefix_cache()
        if self.events is not None:
            self.events.append(("cleared",))

    def start_events(self) -> None:
        """Record KV-cache events from now on, starting from an empty cache (what was cached before,
        the warm-up's prompts, is forgotten), so that the events alone tell what is cached."""
        self.events = None
        self.reset_prefix_cache()
        self.events = []

    def take_events(self) -> list[tuple]:
        """The events since the last call (once per engine step)."""
        events = self.events
        if not events:
            return []
        self.events = []
        return events

    def check_all_free(self) -> None:
        """With no sequence left, every block is free or cached. O(1): what the engine checks each time it
        runs dry (check_integrity walks every block, which takes a large cache tenths of a second)."""
        assert not self._tables, f"{len(self._tables)} sequences still hold blocks"
        assert len(self._lru) == self.num_blocks, f"{self.num_blocks - len(self._lru)} blocks still in use"
        if self.sliding is not None:
            self.sliding.check_all_free()

    def check_integrity(self) -> None:
        """free + cached + in use == total, and every index agrees with the blocks' own state."""
        refs = [0] * self.num_blocks
        for table in self._tables.values():
            for block_id in table:
                refs[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], (
                f"block {block.block_id}: ref count {block.ref_count}"
            )
            assert (block.block_id in self._lru) == (block.ref_count == 0), (
                f"block {block.block_id}: LRU state"
            )
        for key, block_id in self._cached.items():
            assert self.blocks[block_id].key == key, f"block {block_id}: cached key mismatch"
        in_use = sum(1 for b in self.blocks if b.ref_count > 0)
        cached = sum(1 for b in self.blocks if b.ref_count == 0 and b.key is not None)
        free = sum(1 for b in self.blocks if b.ref_count == 0 and b.key is None)
        assert free + cached + in_use == self.num_blocks
        assert free + cached == len(self._lru)
        if self.sliding is not None:
            self.sliding.check_integrity()

    # ---- internals -----------------------------------------------------------------------------
    def _full_block_keys(self, seq: Sequence, num_blocks: int) -> Iterator[bytes]:
        parent = None
        bs = self.block_size
        for i in range(num_blocks):
            parent = block_key(parent, seq.token_ids_slice(i * bs, (i + 1) * bs), seq.cache_salt)
            yield parent

    def _register_full_blocks(self, seq: Sequence, num_full: int) -> None:
        keys = self._keys.setdefault(seq.seq_id, [])
        table = self._tables[seq.seq_id]
        bs = self.block_size
        events = self.events
        sliding = self.sliding
        while len(keys) < num_full:
            i = len(keys)
            parent = keys[-1] if keys else None
            tokens = seq.token_ids_slice(i * bs, (i + 1) * bs)
            key = block_key(parent, tokens, seq.cache_salt)
            keys.append(key)
            if sliding is not None:
                sliding.register(seq.seq_id, i, key)
            block = self.blocks[table[i]]
            if block.key is None and key not in self._cached:
                block.key = key
                self._cached[key] = block.block_id
                if events is not None:
                    events.append(("stored", key, parent, tokens))

    def _sliding_hit_ids(self, seq: Sequence, computed_blocks: Seq[int]) -> list[int]:
        """The sliding group's blocks for the prefix hit `computed_blocks` (get_computed_blocks's)."""
        seq_id, h, ids = self._sliding_hits
        assert seq_id == seq.seq_id and h == len(computed_blocks), "hits come from get_computed_blocks"
        return ids

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._lru[block_id]
        block.ref_count += 1

    def _pop_free(self) -> int:
        block_id, _ = self._lru.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:
            if self._cached.get(block.key) == block_id:
                del self._cached[block.key]
                if self.events is not None:
                    self.events.append(("removed", block.key))
            block.key = None
        block.ref_count = 1
        return block_id
