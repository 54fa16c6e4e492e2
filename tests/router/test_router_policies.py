"""Routing policies against stub engine lists: no network."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from router.config import RouterConfig
from router.upstream.policies import POLICIES, RouteRequest, make_policy
from router.upstream.policies.hashing import rendezvous_order
from router.upstream.policies.least_requests import LeastRequests
from router.upstream.policies.power_of_two import PowerOfTwo
from router.upstream.policies.prefix_affinity import PrefixAffinity
from router.upstream.policies.round_robin import RoundRobin
from router.upstream.policies.session import Session


@dataclass
class Stub:
    address: str
    num_outstanding: int = 0
    extra_load: float = 0.0

    @property
    def load(self) -> float:
        return self.num_outstanding + self.extra_load


def engines(n: int) -> list[Stub]:
    return [Stub(f"10.0.0.{i}:50051") for i in range(n)]


def prompt(prefix: int, length: int = 64) -> list[int]:
    """Token ids whose first 32 depend only on `prefix`, the rest on a random tail."""
    rng = random.Random(prefix)
    head = [rng.randrange(1000) for _ in range(32)]
    return head + [random.randrange(1000) for _ in range(length - 32)]


async def test_make_policy_knows_every_name():
    for name in POLICIES:
        assert make_policy(RouterConfig(policy=name)).name == name
    with pytest.raises(ValueError):
        make_policy(RouterConfig(policy="random"))


async def test_round_robin_cycles_in_address_order():
    es = engines(3)
    policy = RoundRobin()
    picks = [(await policy.pick(list(reversed(es)), RouteRequest([]))).address for _ in range(6)]
    assert picks == [e.address for e in es] * 2


async def test_least_requests_takes_the_fewest_outstanding():
    es = engines(3)
    es[0].num_outstanding, es[1].num_outstanding, es[2].num_outstanding = 4, 1, 2
    assert await LeastRequests().pick(es, RouteRequest([])) is es[1]


async def test_power_of_two_never_picks_the_most_loaded_of_three():
    es = engines(3)
    es[2].num_outstanding = 10
    policy = PowerOfTwo(random.Random(0))
    picks = Counter([(await policy.pick(es, RouteRequest([]))).address for _ in range(300)])
    assert es[2].address not in picks and len(picks) == 2


async def test_prefix_affinity_same_prefix_same_engine_and_spread_across_prefixes():
    es = engines(4)
    policy = PrefixAffinity(max_blocks=2, load_factor=1.25)  # block 16: the key is the first 32 tokens
    for p in range(20):
        chosen = {(await policy.pick(es, RouteRequest(prompt(p), 16))).address for _ in range(5)}
        assert len(chosen) == 1  # random tails do not matter
    spread = Counter([(await policy.pick(es, RouteRequest(prompt(p), 16))).address for p in range(200)])
    assert len(spread) == 4 and min(spread.values()) > 20


async def test_prefix_affinity_key_uses_only_full_blocks():
    policy = PrefixAffinity(max_blocks=2)
    assert policy.key(RouteRequest(list(range(15)), 16)) is None  # not one full block: nothing to share
    assert policy.key(RouteRequest(list(range(16)), 16)) == policy.key(
        RouteRequest(list(range(16)) + [99], 16)
    )
    assert policy.key(RouteRequest(list(range(40)), 16)) == policy.key(
        RouteRequest(list(range(32)) + [7] * 9, 16)
    )
    assert policy.key(RouteRequest(list(range(32)), 16)) != policy.key(RouteRequest(list(range(16)), 16))


async def test_prefix_affinity_bounded_load_spills_then_short_prompts_go_least_loaded():
    es = engines(3)
    policy = PrefixAffinity(max_blocks=2, load_factor=1.25)
    hot = RouteRequest(prompt(1), 16)
    home = await policy.pick(es, hot)
    home.num_outstanding = 10  # mean 3.33: bound 5.17, home is over it
    spill = await policy.pick(es, hot)
    assert spill is not home
    assert spill is rendezvous_order(es, policy.key(hot))[1]  # the next engine in the key's own order
    home.num_outstanding = 1
    assert await policy.pick(es, hot) is home  # back home once within the bound
    es[2].num_outstanding, es[0].num_outstanding = 0, 3
    home.num_outstanding = 3
    short = RouteRequest([1, 2, 3], 16)
    assert (await policy.pick(es, short)).num_outstanding == min(e.num_outstanding for e in es)


async def test_rendezvous_moves_only_the_removed_engines_keys():
    es = engines(5)
    policy = PrefixAffinity(max_blocks=2)
    before = {p: (await policy.pick(es, RouteRequest(prompt(p), 16))).address for p in range(200)}
    gone = es.pop(2).address
    after = {p: (await policy.pick(es, RouteRequest(prompt(p), 16))).address for p in range(200)}
    moved = [p for p in before if before[p] != after[p]]
    assert moved and all(before[p] == gone for p in moved)


async def test_session_sticks_and_falls_back_to_least_loaded():
    es = engines(3)
    policy = Session()
    first = await policy.pick(es, RouteRequest([], 16, "conversation-1"))
    for _ in range(5):
        assert await policy.pick(es, RouteRequest([9] * 50, 16, "conversation-1")) is first
    homes = {(await policy.pick(es, RouteRequest([], 16, f"s{i}"))).address for i in range(30)}
    assert len(homes) == 3
    es[0].num_outstanding, es[1].num_outstanding = 2, 1
    assert await policy.pick(es, RouteRequest([], 16, None)) is es[2]


async def test_short_prompts_spread_over_idle_engines_in_turn():
    """Requests that arrive one at a time find every engine idle: the tie is broken in turn, so 15 short
    prompts land 5/5/5 (before: all on the first engine), and the same again from a fresh policy."""
    es = engines(3)
    for policy in (PrefixAffinity(), Session()):
        picks = [(await policy.pick(es, RouteRequest([1, 2, 3], 16))).address for _ in range(15)]
        assert Counter(picks) == {e.address: 5 for e in es}, picks
        fresh = type(policy)()
        assert [(await fresh.pick(es, RouteRequest([1, 2, 3], 16))).address for _ in range(15)] == picks
    # Ties only: a less loaded engine is always taken.
    es[1].extra_load = -1.0
    assert {(await PrefixAffinity().pick(es, RouteRequest([1], 16))).address for _ in range(6)} == {
        es[1].address
    }


async def test_prefix_affinity_key_holds_the_cache_salt():
    policy = PrefixAffinity(max_blocks=2)
    tokens = prompt(7)
    plain = policy.key(RouteRequest(tokens, 16))
    assert policy.key(RouteRequest(tokens, 16, cache_salt="")) == plain
    salted = {policy.key(RouteRequest(tokens, 16, cache_salt=f"tenant-{i}")) for i in range(20)}
    assert len(salted) == 20 and plain not in salted
    # One hot prefix under many salts spreads, each salt keeping its own engine.
    es = engines(4)
    homes = {}
    for i in range(40):
        request = RouteRequest(tokens, 16, cache_salt=f"tenant-{i}")
        homes[i] = (await policy.pick(es, request)).address
        assert (await policy.pick(es, request)).address == homes[i]
    assert len(set(homes.values())) == 4
