from __future__ import annotations

from array import array
from collections.abc import Sequence

from router.upstream.policies.base import LeastLoaded, Policy, Routable, RouteRequest, affinity_outcomes
from router.upstream.policies.hashing import key_digest, pick_bounded


class PrefixAffinity(Policy):
    """Requests whose prompts start with the same full KV blocks go to the same engine, where those blocks
    are likely still cached; load-bounded so that one hot prefix spreads before it swamps an engine.

    The key is the first `max_blocks` full blocks (fewer when the prompt is shorter): long enough to tell
    apart system prompts that share a chat template's opening, short enough that a conversation keeps
    its key as it grows turn by turn. Two prompts with different keys share fewer than `max_blocks`
    leading blocks, so whatever affinity misses costs at most that much prefill. A prompt without one
    full block shares nothing cacheable: it goes to the least loaded engine, equal ones in turn.

    The request's `cache_salt` is part of the key: the engines salt their block hashes with it, so two
    requests with different salts never share a cached block however alike their prompts, and one
    tenant's hot system prompt spreads apart from another's instead of piling onto one engine.
    """

    name = "prefix_affinity"

    def __init__(self, max_blocks: int = 8, load_factor: float = 1.25) -> None:
        self.max_blocks = max_blocks
        self.load_factor = load_factor
        self.outcomes = affinity_outcomes()
        self._least_loaded = LeastLoaded()

    def key(self, request: RouteRequest) -> bytes | None:
        num_blocks = min(self.max_blocks, len(request.token_ids) // request.block_size)
        if num_blocks == 0:
            return None
        tokens = array("I", request.token_ids[: num_blocks * request.block_size]).tobytes()
        if not request.cache_salt:  # unsalted keys stay what they were
            return key_digest(tokens)
        salt = request.cache_salt.encode("utf-8", "surrogatepass")
        # Length-prefixed, so that no salt can end where another salt's tokens begin.
        return key_digest(len(salt).to_bytes(4, "little") + salt + tokens)

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        if len(request.token_ids) < request.block_size:
            self.outcomes["none"] += 1
            return self._least_loaded(engines)
        if len(engines) == 1:  # the key's own engine, whatever the key
            self.outcomes["hit"] += 1
            return engines[0]
        engine, spilled = pick_bounded(engines, self.key(request), self.load_factor)
        self.outcomes["spill" if spilled else "hit"] += 1
        return engine
