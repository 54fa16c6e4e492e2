"""What one engine holds in its prefix cache, kept from its KV-cache event stream (kv_events.py).

The engine keys every full block of `block_size` tokens by a chained hash (protos/pagoda/engine/v1/
engine.proto, KvBlocksStored; engine_service/core/block_manager.py, block_key):

    hash_0 = SHA-256(32 zero bytes || tokens[0:B] as little-endian int64 || cache_salt as UTF-8)
    hash_i = SHA-256(hash_{i-1}    || tokens[i*B:(i+1)*B] ...                 || cache_salt ...)

so a hash names the whole prefix ending with its block, and the router recomputes a prompt's hashes from the
token ids it sends. An engine reuses a prompt's leading blocks up to the first one missing from its cache (and
always recomputes the last token), which is what `matched_blocks` counts.

The index is a set of hashes: a snapshot replaces it, batches add and remove. It is `live` only between a
complete snapshot and the stream's end; a gap in the batches' numbers makes it stale until the next snapshot.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Iterator, Sequence

ROOT_PARENT = b"\0" * 32
MAX_INDEXED_BLOCKS = 1 << 20  # more than any engine's cache: an engine reporting more is resynced


def block_hashes(token_ids: Sequence[int], block_size: int, cache_salt: str = "") -> Iterator[bytes]:
    """The hashes of the blocks an engine could reuse for this prompt, first block first (lazily: a
    caller that stops at the first miss hashes no further). The last token is always computed, so a
    prompt of exactly k blocks yields k - 1."""
    salt = cache_salt.encode("utf-8", "surrogatepass") if cache_salt else b""
    parent = ROOT_PARENT
    for i in range((len(token_ids) - 1) // block_size):
        block = array("q", token_ids[i * block_size : (i + 1) * block_size])
        if sys.byteorder == "big":
            block.byteswap()
        parent = hashlib.sha256(parent + block.tobytes() + salt).digest()
        yield parent


class KvIndex:
    """One engine's cached block hashes."""

    def __init__(self, max_blocks: int = MAX_INDEXED_BLOCKS):
        self.max_blocks = max_blocks
        self.block_size = 0  # from the snapshot
        self.seq = 0  # the last batch applied
        self.live = False
        self.num_snapshots = 0
        self._cached: set[bytes] = set()
        self._pending: set[bytes] | None = None  # a snapshot arriving in chunks

    def __len__(self) -> int:
        return len(self._cached)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._cached

    def stale(self) -> None:
        """The stream ended or skipped: what the index says may be wrong until the next snapshot."""
        self.live = False
        self._pending = None

    def snapshot_chunk(self, seq: int, block_size: int, hashes: Sequence[bytes], last: bool) -> bool:
        """One message of a snapshot; False when it is too large to keep (then the index is stale)."""
        if self._pending is None:
            self._pending = set()
        self._pending.update(hashes)
        if len(self._pending) > self.max_blocks:
            self.stale()
            return False
        if last:
            self._cached, self._pending = self._pending, None
            self.block_size, self.seq, self.live = block_size, seq, True
            self.num_snapshots += 1
        return True

    def apply_batch(self, seq: int, events) -> bool:
        """One batch (KvEvent messages); False for a gap in the numbering or a cache too large to keep."""
        if not self.live or seq != self.seq + 1:
            self.stale()
            return False
        cached = self._cached
        for event in events:
            which = event.WhichOneof("event")
            if which == "stored":
                cached.update(event.stored.block_hashes)
            elif which == "removed":
                cached.difference_update(event.removed.block_hashes)
            elif which == "cleared":
                cached.clear()
        self.seq = seq
        if len(cached) > self.max_blocks:
            self.stale()
            return False
        return True
