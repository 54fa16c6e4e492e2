"""The kv_aware policy and the KV index against stub engines: no network (the real stream is tested in
tests/router/test_router_kv_events.py and tests/engine_service/test_kv_events.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pagoda.engine.v1 import engine_pb2 as pb
from router.config import RouterConfig
from router.upstream.kv_index import KvIndex, block_hashes
from router.upstream.policies import RouteRequest, make_policy
from router.upstream.policies.kv_aware import KvAware
from router.upstream.policies.prefix_affinity import PrefixAffinity

BS = 4


@dataclass
class Stub:
    address: str
    num_outstanding: int = 0
    extra_load: float = 0.0
    kv_index: KvIndex | None = field(default_factory=KvIndex)

    @property
    def load(self) -> float:
        return self.num_outstanding + self.extra_load


def engines(n: int) -> list[Stub]:
    es = [Stub(f"10.0.0.{i}:50051") for i in range(n)]
    for e in es:
        e.kv_index.snapshot_chunk(0, BS, [], last=True)
    return es


def caches(engine: Stub, tokens: list[int], salt: str = "") -> None:
    """The engine reports the prompt's full blocks stored (one batch)."""
    index = engine.kv_index
    stored = pb.KvBlocksStored(block_hashes=list(block_hashes(tokens + [0], BS, salt)))
    assert index.apply_batch(index.seq + 1, [pb.KvEvent(stored=stored)])


def evicts(engine: Stub, tokens: list[int]) -> None:
    index = engine.kv_index
    removed = pb.KvBlocksRemoved(block_hashes=list(block_hashes(tokens + [0], BS)))
    assert index.apply_batch(index.seq + 1, [pb.KvEvent(removed=removed)])


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


async def test_the_longest_cached_prefix_wins_over_hashing():
    es = engines(3)
    system = tokens(1, 40)  # 10 blocks
    hashed = await PrefixAffinity().pick(es, RouteRequest(system + [7], BS))
    holder = next(e for e in es if e is not hashed)
    caches(holder, system)
    caches(hashed, system[:8])  # 2 blocks in common only
    policy = KvAware()
    for tail in range(5):  # every follow-up of the conversation, whatever its tail
        assert await policy.pick(es, RouteRequest(system + tokens(tail, 9), BS)) is holder
    assert policy.outcomes == {"hit": 5, "spill": 0, "none": 0}


async def test_routing_follows_evictions_and_salts():
    es = engines(2)
    prompt = tokens(2, 33)
    hashed = await PrefixAffinity().pick(es, RouteRequest(prompt, BS))
    other = next(e for e in es if e is not hashed)
    caches(other, prompt)
    policy = KvAware()
    assert await policy.pick(es, RouteRequest(prompt, BS)) is other
    # Another tenant's salt shares no block: hashing (salted) decides.
    salted = RouteRequest(prompt, BS, cache_salt="tenant-b")
    assert await policy.pick(es, salted) is await PrefixAffinity().pick(es, salted)
    evicts(other, prompt)
    assert await policy.pick(es, RouteRequest(prompt, BS)) is hashed  # nothing cached: hashing
    caches(hashed, prompt)
    assert await policy.pick(es, RouteRequest(prompt, BS)) is hashed
    assert policy.outcomes == {"hit": 2, "spill": 0, "none": 2}


async def test_load_bound_passes_over_a_busy_holder_and_counts_a_spill():
    es = engines(2)
    prompt = tokens(3, 64)
    caches(es[0], prompt)
    caches(es[1], prompt[:16])
    policy = KvAware(load_threshold=2.0)
    es[0].num_outstanding = 2  # at the bound: still picked
    assert await policy.pick(es, RouteRequest(prompt, BS)) is es[0]
    es[0].num_outstanding = 3  # over it: the next best cached prefix
    assert await policy.pick(es, RouteRequest(prompt, BS)) is es[1]
    assert policy.outcomes == {"hit": 1, "spill": 1, "none": 0}


async def test_ties_go_to_the_less_loaded_then_a_fixed_order():
    es = engines(3)
    prompt = tokens(4, 32)
    for e in es:
        caches(e, prompt)
    policy = KvAware()
    first = await policy.pick(es, RouteRequest(prompt, BS))
    assert all([await policy.pick(list(reversed(es)), RouteRequest(prompt, BS)) is first for _ in range(3)])
    first.num_outstanding = 1
    second = await policy.pick(es, RouteRequest(prompt, BS))
    assert second is not first


async def test_stale_or_missing_indexes_fall_back_to_hashing():
    es = engines(2)
    prompt = tokens(5, 32)
    hashed = await PrefixAffinity().pick(es, RouteRequest(prompt, BS))
    other = next(e for e in es if e is not hashed)
    caches(other, prompt)
    other.kv_index.stale()  # its stream went down
    policy = KvAware()
    assert await policy.pick(es, RouteRequest(prompt, BS)) is hashed
    other.kv_index = None  # never subscribed
    assert await policy.pick(es, RouteRequest(prompt, BS)) is hashed
    # An index for another block size says nothing about this model's blocks.
    es = engines(2)
    caches(es[1], prompt)
    assert await policy.pick(es, RouteRequest(prompt, 8)) is await PrefixAffinity().pick(
        es, RouteRequest(prompt, 8)
    )
    assert policy.outcomes["none"] == 3


def test_index_gap_makes_it_stale_until_the_next_snapshot():
    index = KvIndex()
    assert not index.live
    assert not index.apply_batch(1, [])  # no snapshot yet
    h = list(block_hashes(tokens(6, 9), BS))
    assert index.snapshot_chunk(7, BS, h[:1], last=False) and not index.live  # a snapshot in two chunks
    assert index.snapshot_chunk(7, BS, h[1:], last=True) and index.live
    assert set(h) <= set(index._cached) and index.seq == 7
    assert index.apply_batch(8, [pb.KvEvent(cleared=pb.KvAllBlocksCleared())]) and len(index) == 0
    assert not index.apply_batch(10, [])  # batch 9 was missed
    assert not index.live
    index.snapshot_chunk(12, BS, h, last=True)
    assert index.live and len(index) == 2


def test_index_refuses_more_blocks_than_it_keeps():
    index = KvIndex(max_blocks=2)
    assert not index.snapshot_chunk(1, BS, [b"a", b"b", b"c"], last=True)
    assert not index.live
    assert index.snapshot_chunk(1, BS, [b"a"], last=True)
    stored = pb.KvBlocksStored(block_hashes=[b"b", b"c"])
    assert not index.apply_batch(2, [pb.KvEvent(stored=stored)])
    assert not index.live


def test_block_hashes_match_the_engines_keys():
    from engine_service.core.block_manager import block_key

    prompt = tokens(8, 4 * BS + 1)
    for salt in ("", "tenant"):
        keys, parent = [], None
        for i in range(4):
            parent = block_key(parent, prompt[i * BS : (i + 1) * BS], salt or None)
            keys.append(parent)
        assert list(block_hashes(prompt, BS, salt)) == keys
    assert len(list(block_hashes(prompt[:-1], BS))) == 3  # the last token is always computed


def test_make_policy_and_its_flag():
    from router.main import parse_args

    policy = make_policy(RouterConfig(policy="kv_aware", kv_load_threshold=1.5))
    assert isinstance(policy, KvAware) and policy.load_threshold == 1.5
    config = parse_args(["--policy", "kv_aware", "--kv-load-threshold", "2"])
    assert config.policy == "kv_aware" and config.kv_load_threshold == 2.0
