"""The sliding-window group's blocks (KV-cache group 1 of a hybrid model, see kv_cache_groups.py).

Pure Python. Its own pool, sized by the sliding layers' bytes, with the same three block states as the
global group's (BlockManager): in use, cached (a prefix-cache key, evictable) and free, the last two in one
LRU queue. A sequence's table has an entry for every block of its context, as the global group's, but the
blocks wholly before its window point at the NULL block, and the blocks they held go back to the pool:

    positions   0 ....... 8 ....... 16 ...... 24 ..... 30        window W = 10, block_size 8
    table       [ null    | null    | b7      | b2      ]        a query at 30 sees keys 21..30

The null block is the pool's extra block (id `num_blocks`): never handed out, never written (zeros), so a
kernel that loads it for masked keys reads finite values. A block is released when the first query of the
step (the oldest the step runs: a prefill chunk's first token) no longer sees it: at allocation, before the
step's new blocks are taken, so the released blocks count as free for the step's own admission. Between
allocations (a decode token inside its block, which the scheduler skips) a release waits for the next
block boundary: a sequence holds at most about W / block_size + 2 blocks here (kv_cache_groups).

Prefix caching: a block is keyed with the global group's key for the same positions (one hash chain, kept
by the BlockManager) and stays cached when released. A prefix hit of h blocks needs, here, every block a
query at position h * block_size still sees (`hits`); the BlockManager uses the longest h for which both
groups hold what it needs, fewer cached tokens otherwise.

The runner mirrors each table (worker/input_batch.py); what changed since its last step is reported as
(leading null entries, ids appended), see `take_changes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq


class SlidingBlocks:
    def __init__(self, num_blocks: int, block_size: int, window: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or window < 1:
            raise ValueError(f"need a sliding block and a window, got {num_blocks} blocks, window {window}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.window = window
        self.null_block = num_blocks  # the pool's extra block, past the ones handed out
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.keys: list[bytes | None] = [None] * num_blocks
        self._lru: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # key -> block id
        self._tables: dict[str, list[int]] = {}  # seq id -> a block id (or the null block) per block
        self._num_null: dict[str, int] = {}  # seq id -> its leading null entries
        # seq id -> (num null, ids appended) since the last take_changes
        self._changes: dict[str, tuple[int, list[int]]] = {}

    # ---- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._lru)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._lru) / self.num_blocks

    def block_table(self, seq_id: str) -> list[int]:
        return self._tables.get(seq_id, [])

    def num_blocks_held(self, seq_id: str) -> int:
        """Blocks of the pool the sequence holds (its table's entries that are not the null block)."""
        return len(self._tables.get(seq_id, ())) - self._num_null.get(seq_id, 0)

    def first_visible(self, position: int) -> int:
        """The first block that a query at `position`, and every later one, still sees."""
        return max(0, (position - self.window + 1) // self.block_size)

    def hits(self, keys: Seq[bytes]) -> tuple[int, list[int]]:
        """(h, ids): the longest prefix of h <= len(keys) blocks (keys: the global group's hits') whose
        window before position h * block_size is all cached here, and those cached blocks, in order."""
        cached = self._cached
        run = 0  # cached blocks in a row, ending at block j
        runs = []
        for key in keys:
            run = run + 1 if key in cached else 0
            runs.append(run)
        for h in range(len(keys), 0, -1):
            first = self.first_visible(h * self.block_size)
            if runs[h - 1] >= h - first:
                return h, [cached[keys[j]] for j in range(first, h)]
        return 0, []

    def can_allocate(self, seq_id: str, start: int, end: int, hit_ids: Seq[int] = ()) -> bool:
        """Whether `seq_id`, computed up to `start` (its hits included), can get blocks up to `end`."""
        need = -(-end // self.block_size)
        table = self._tables.get(seq_id)
        if table is None:  # a sequence with no blocks yet: its hits, then new blocks
            revived = sum(1 for b in hit_ids if self.ref_counts[b] == 0)
            return need - start // self.block_size <= len(self._lru) - revived
        refs = self.ref_counts
        released = table[self._num_null[seq_id] : self.first_visible(start)]
        freed = sum(1 for b in released if refs[b] == 1)
        return need - len(table) <= len(self._lru) + freed

    # ---- actions -------------------------------------------------------------------------------
    def allocate(self, seq_id: str, start: int, end: int, hit_ids: Seq[int] = ()) -> None:
        """Release the blocks before the window of the query at `start`, then cover tokens up to `end`.
        A sequence with no table starts with its hits (the blocks of the window before `start`)."""
        table = self._tables.get(seq_id)
        null = self.null_block
        cut = self.first_visible(start)
        if table is None:
            assert len(hit_ids) == start // self.block_size - cut, "hits must be the window's blocks"
            table = self._tables[seq_id] = [null] * cut
            for block_id in hit_ids:
                self._take(block_id)
                table.append(block_id)
            num_before, num_null = 0, cut
        else:
            num_before, num_null = len(table), self._num_null[seq_id]
            for i in range(num_null, cut):
                self._release(table[i])
                table[i] = null
            num_null = max(num_null, cut)
        changed = num_null != self._num_null.get(seq_id)
        self._num_null[seq_id] = num_null
        need = -(-end // self.block_size)
        while len(table) < need:
            table.append(self._pop_free())
        if changed or len(table) > num_before:
            _, appended = self._changes.get(seq_id, (0, []))
            self._changes[seq_id] = (num_null, appended + table[num_before:])

    def register(self, seq_id: str, index: int, key: bytes) -> None:
        """Key the sequence's block `index` (full, computed) as the global group keyed its own."""
        table = self._tables.get(seq_id)
        if table is None or index >= len(table):
            return
        block_id = table[index]
        if block_id != self.null_block and self.keys[block_id] is None and key not in self._cached:
            self.keys[block_id] = key
            self._cached[key] = block_id

    def free(self, seq_id: str) -> None:
        """Release the sequence's blocks, tail first (its head is more likely shared)."""
        null = self.null_block
        for block_id in reversed(self._tables.pop(seq_id, [])):
            if block_id != null:
                self._release(block_id)
        self._num_null.pop(seq_id, None)
        self._changes.pop(seq_id, None)

    def take_changes(self) -> dict[str, tuple[int, list[int]]]:
        """Per sequence whose table changed since the last call: (its leading null entries now, the ids
        appended). A sequence that had no table reports its whole table, null entries included."""
        changes, self._changes = self._changes, {}
        return changes

    def reset_prefix_cache(self) -> None:
        for block_id in self._cached.values():
            self.keys[block_id] = None
        self._cached.clear()

    def check_all_free(self) -> None:
        assert not self._tables, f"{len(self._tables)} sequences still hold sliding blocks"
        assert len(self._lru) == self.num_blocks, f"{self.num_blocks - len(self._lru)} sliding blocks in use"

    def check_integrity(self) -> None:
        refs = [0] * self.num_blocks
        for seq_id, table in self._tables.items():
            num_null = self._num_null[seq_id]
            assert all(b == self.null_block for b in table[:num_null]), f"{seq_id}: null prefix"
            for block_id in table[num_null:]:
                assert block_id != self.null_block, f"{seq_id}: null block inside the window"
                refs[block_id] += 1
        for block_id, count in enumerate(refs):
            assert self.ref_counts[block_id] == count, f"sliding block {block_id}: ref count"
            assert (block_id in self._lru) == (count == 0), f"sliding block {block_id}: LRU state"
        for key, block_id in self._cached.items():
            assert self.keys[block_id] == key, f"sliding block {block_id}: cached key mismatch"

    # ---- internals -----------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self._lru[block_id]
        self.ref_counts[block_id] += 1

    def _release(self, block_id: int) -> None:
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] == 0:
            self._lru[block_id] = None  # cached (if keyed) and evictable, most recently used last

    def _pop_free(self) -> int:
        block_id, _ = self._lru.popitem(last=False)
        key = self.keys[block_id]
        if key is not None:
            if self._cached.get(key) == block_id:
                del self._cached[key]
            self.keys[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id
