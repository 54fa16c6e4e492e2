from __future__ import annotations

from collections.abc import Sequence

from router.upstream.kv_index import block_hashes
from router.upstream.policies.base import Policy, Routable, RouteRequest, affinity_outcomes
from router.upstream.policies.hashing import rendezvous_order
from router.upstream.policies.prefix_affinity import PrefixAffinity


class KvAware(Policy):
    """The engine whose prefix cache really holds the longest prefix of the prompt, from the engines' own
    KV-cache events (each engine's `kv_index`, kept by upstream/kv_events.py), as llm-d's precise
    prefix-cache scorer and Dynamo's KV router do.

    1. Only engines within `load_threshold` of the least loaded one compete (load: Engine.load), so one
       hot prefix cannot pile every request onto one engine.
    2. Among those with a live index, the most cached leading blocks wins; ties go to the less loaded, then
       to the prompt's rendezvous order (deterministic: every router replica picks alike).
    3. No engine with a live index, or none holding the prompt's first block: prefix affinity's hashing,
       so that a new prefix still lands on one engine, which then caches it.

    Outcomes: "hit" (a cached prefix decided), "spill" (a longer cached prefix was on an engine over the
    load bound), "none" (nothing cached anywhere: hashed).
    """

    name = "kv_aware"

    def __init__(self, max_blocks: int = 8, load_factor: float = 1.25, load_threshold: float = 4.0) -> None:
        self.load_threshold = load_threshold
        self.outcomes = affinity_outcomes()
        self._hashing = PrefixAffinity(max_blocks, load_factor)

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        indexed = [e for e in engines if _live(e, request.block_size)]
        if indexed:
            matched = _matched_blocks(indexed, request)
            floor = min(e.load for e in engines)
            within = [e for e in indexed if e.load <= floor + self.load_threshold]
            best = max((matched[e.address] for e in within), default=0)
            if best > 0:
                key = self._hashing.key(request) or b""
                rank = {e.address: r for r, e in enumerate(rendezvous_order(within, key))}
                tied = [e for e in within if matched[e.address] == best]
                engine = min(tied, key=lambda e: (e.load, rank[e.address]))
                spilled = max(matched.values()) > best
                self.outcomes["spill" if spilled else "hit"] += 1
                return engine
        self.outcomes["none"] += 1
        return await self._hashing.pick(engines, request)


def _live(engine: Routable, block_size: int) -> bool:
    index = getattr(engine, "kv_index", None)
    return index is not None and index.live and index.block_size == block_size


def _matched_blocks(engines: Sequence[Routable], request: RouteRequest) -> dict[str, int]:
    """Each engine's cached leading blocks of the prompt: hashed block by block, until no engine has one."""
    matched = dict.fromkeys((e.address for e in engines), 0)
    still = list(engines)
    for i, block_hash in enumerate(block_hashes(request.token_ids, request.block_size, request.cache_salt)):
        still = [e for e in still if block_hash in e.kv_index]
        if not still:
            break
        for e in still:
            matched[e.address] = i + 1
    return matched
