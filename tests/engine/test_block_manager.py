"""The block manager with exact block ids, reference counts and eviction order."""

from __future__ import annotations

import pytest

from engine_service.core.block_manager import BlockManager
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.sequence import Sequence


def seq(name: str, tokens: list[int], salt: str | None = None) -> Sequence:
    return Sequence(f"{name}#0", name, 0, tokens, SamplingParams(), salt)


def admit(bm: BlockManager, s: Sequence) -> list[int]:
    hits = bm.get_computed_blocks(s)
    num_new = s.num_tokens - len(hits) * bm.block_size
    assert bm.can_allocate(s, num_new, hits)
    bm.allocate(s, num_new, hits)
    s.num_computed_tokens += num_new
    return hits


def test_allocate_and_free_exact_ids():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(10)))  # 3 blocks: 2 full + 1 partial
    admit(bm, a)
    assert bm.block_table(a) == [0, 1, 2]
    assert [bm.blocks[i].ref_count for i in range(4)] == [1, 1, 1, 0]
    assert bm.num_free_blocks == 5
    bm.check_integrity()
    bm.free(a)
    assert bm.num_free_blocks == 8
    bm.check_integrity()


def test_check_all_free_fails_while_a_sequence_holds_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(10)))
    admit(bm, a)
    with pytest.raises(AssertionError, match="still hold blocks"):
        bm.check_all_free()
    bm.free(a)
    bm.check_all_free()  # cached full blocks count as free


def test_prefix_hit_shares_full_blocks_and_recomputes_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(12)))  # exactly 3 full blocks
    admit(bm, a)
    b = seq("b", list(range(12)))
    hits = admit(bm, b)
    # The last token is always recomputed: only 2 of the 3 full blocks are hits.
    assert hits == [0, 1]
    assert bm.block_table(b) == [0, 1, 3]
    assert bm.blocks[0].ref_count == 2 and bm.blocks[2].ref_count == 1
    bm.check_integrity()


def test_partial_blocks_are_never_shared():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, seq("a", list(range(6))))
    b = seq("b", list(range(6)))
    assert bm.get_computed_blocks(b) == [0]  # block 1 holds 2 tokens: not shared


def test_eviction_is_lru_and_tail_first():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = seq("a", [1, 2, 3, 4, 5, 6])  # blocks 0, 1, 2 (all full)
    admit(bm, a)
    bm.free(a)  # freed tail first: LRU order now 3, 4, 5, 2, 1, 0
    bm.check_integrity()
    b = seq("b", [9, 9, 9, 9, 9, 9, 9, 9])  # needs 4 blocks: takes 3, 4, 5 and then evicts block 2 (a's tail)
    admit(bm, b)
    assert bm.block_table(b) == [3, 4, 5, 2]
    # a's head (blocks 0, 1) is still cached: a new request with a's prefix hits it.
    c = seq("c", [1, 2, 3, 4, 7])
    assert bm.get_computed_blocks(c) == [0, 1]
    # a's tail was evicted: its third block no longer hits.
    d = seq("d", [1, 2, 3, 4, 5, 6, 7])
    assert bm.get_computed_blocks(d) == [0, 1]
    bm.check_integrity()


def test_cached_hit_revives_a_free_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq("a", [1, 2, 3, 4, 5])
    admit(bm, a)
    bm.free(a)
    b = seq("b", [1, 2, 3, 4, 6])
    assert bm.can_allocate(b, 1, [0, 1])
    admit(bm, b)
    assert bm.block_table(b)[:2] == [0, 1]
    assert bm.blocks[0].ref_count == 1
    bm.check_integrity()


def test_salt_separates_tenants():
    bm = BlockManager(num_blocks=8, block_size=2)
    admit(bm, seq("a", [1, 2, 3, 4, 5], salt="tenant-a"))
    assert bm.get_computed_blocks(seq("b", [1, 2, 3, 4, 5], salt="tenant-b")) == []
    assert bm.get_computed_blocks(seq("c", [1, 2, 3, 4, 5], salt="tenant-a")) == [0, 1]


def test_can_allocate_counts_revived_blocks():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = seq("a", [1, 2, 3, 4, 5])  # uses all 3 blocks
    admit(bm, a)
    bm.free(a)
    b = seq(
        "b", [1, 2, 3, 4, 5, 6, 7, 8, 9]
    )  # hits 2 blocks, needs 3 more: only 1 left once the hits are taken
    hits = bm.get_computed_blocks(b)
    assert hits == [0, 1]
    assert not bm.can_allocate(b, b.num_tokens - 4, hits)


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    admit(bm, seq("a", [1, 2, 3, 4, 5]))
    assert bm.get_computed_blocks(seq("b", [1, 2, 3, 4, 5])) == []
    bm.check_integrity()


def test_rejects_empty_pool():
    with pytest.raises(ValueError, match="at least one block"):
        BlockManager(num_blocks=0, block_size=16)


def test_block_keys_are_sha256_chained_and_salted():
    """A cryptographic key: colliding keys on purpose would hand one tenant another's cached KV."""
    import hashlib
    from array import array

    from engine_service.core.block_manager import block_key

    first = block_key(None, [1, 2, 3, 4], None)
    assert first == hashlib.sha256(b"\0" * 32 + array("q", [1, 2, 3, 4]).tobytes()).digest()
    second = block_key(first, [5, 6, 7, 8], "tenant-a")
    assert second == hashlib.sha256(first + array("q", [5, 6, 7, 8]).tobytes() + b"tenant-a").digest()
    assert block_key(first, [5, 6, 7, 8], "tenant-b") != second
    assert block_key(None, [5, 6, 7, 8], "tenant-a") != second  # the parent is part of the key


# ---- KV-cache events ------------------------------------------------------------------------------------
def chain(tokens: list[int], block_size: int, salt: str | None = None) -> list[bytes]:
    """The keys of `tokens`' full blocks, computed apart from the block manager."""
    import hashlib
    import struct

    keys, parent = [], b"\0" * 32
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size : (i + 1) * block_size]
        h = hashlib.sha256(parent + struct.pack(f"<{len(block)}q", *block))
        if salt is not None:
            h.update(salt.encode())
        parent = h.digest()
        keys.append(parent)
    return keys


def test_no_events_until_started():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, seq("a", list(range(10))))
    assert bm.events is None and bm.take_events() == []


def test_start_events_forgets_what_was_cached_before():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(8)))
    admit(bm, a)
    bm.free(a)
    bm.start_events()
    assert bm.take_events() == []  # the event stream starts from an empty cache
    assert bm.get_computed_blocks(seq("b", list(range(9)))) == []  # the warm-up's blocks are no hits


def test_stored_events_carry_exact_chained_hashes_parents_and_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.start_events()
    tokens = list(range(100, 110))  # 2 full blocks + 2 tokens
    admit(bm, seq("a", tokens, salt="tenant"))
    k0, k1 = chain(tokens, 4, "tenant")
    assert bm.take_events() == [
        ("stored", k0, None, tokens[0:4]),
        ("stored", k1, k0, tokens[4:8]),
    ]
    assert bm.take_events() == []  # drained
    # The same prompt unsalted is another chain; a shared prefix stores nothing new.
    admit(bm, seq("b", tokens[:8] + [1, 2, 3, 4]))
    u0, u1, u2 = chain(tokens[:8] + [1, 2, 3, 4], 4)
    assert u0 != k0
    assert [e[1] for e in bm.take_events()] == [u0, u1, u2]
    admit(bm, seq("c", tokens[:8] + [1, 2, 3, 4, 5]))  # hits u0, u1 (the last block is recomputed)
    assert bm.take_events() == []


def test_a_block_filled_by_decoding_is_stored_when_its_last_token_is_known():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.start_events()
    s = seq("a", [1, 2, 3])
    admit(bm, s)
    assert bm.take_events() == []
    s.output_token_ids.append(9)  # the 4th token, sampled
    s.num_computed_tokens = 4
    bm.register_computed(s)
    (k0,) = chain([1, 2, 3, 9], 4)
    assert bm.take_events() == [("stored", k0, None, [1, 2, 3, 9])]


def test_eviction_removes_the_reused_blocks_tail_first_and_reset_clears():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.start_events()
    a = seq("a", list(range(12)))  # 3 full blocks, cached once freed
    admit(bm, a)
    keys = chain(list(range(12)), 4)
    assert [e[1] for e in bm.take_events()] == keys
    bm.free(a)
    b = seq("b", list(range(50, 58)))  # 2 blocks: the free one, then a's tail (evicted first)
    admit(bm, b)
    events = bm.take_events()
    assert events[0] == ("removed", keys[2])
    assert [e[0] for e in events[1:]] == ["stored", "stored"]
    bm.free(b)
    bm.reset_prefix_cache()
    assert bm.take_events() == [("cleared",)]
    bm.check_integrity()
