"""Rendezvous (highest-random-weight) hashing with bounded load, shared by prefix affinity and sessions.

Every engine gets a score hash(key, address); engines are tried best score first, skipping any whose load
is above `load_factor` * mean load + 1. Adding or removing an engine moves only the keys whose best engine
it is, and every router replica computes the same order with no shared state. (The engine at the mean is
never above the bound, so the walk always ends.)
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

from router.upstream.policies.base import Routable


def key_digest(data: bytes) -> bytes:
    return blake2b(data, digest_size=16).digest()


def _score(key: bytes, address: str) -> bytes:
    return blake2b(address.encode(), digest_size=8, key=key).digest()


def rendezvous_order(engines: Sequence[Routable], key: bytes) -> list[Routable]:
    return sorted(engines, key=lambda e: _score(key, e.address), reverse=True)


def pick_bounded(engines: Sequence[Routable], key: bytes, load_factor: float) -> tuple[Routable, bool]:
    """The key's best engine within the load bound, and whether a better one was skipped (a spill)."""
    bound = load_factor * sum(e.load for e in engines) / len(engines) + 1.0
    for rank, engine in enumerate(rendezvous_order(engines, key)):
        if engine.load <= bound:
            return engine, rank > 0
    raise AssertionError("unreachable: the least loaded engine is within the bound")
