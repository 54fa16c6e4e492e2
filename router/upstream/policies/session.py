from __future__ import annotations

from collections.abc import Sequence

from router.upstream.policies.base import LeastLoaded, Policy, Routable, RouteRequest, affinity_outcomes
from router.upstream.policies.hashing import key_digest, pick_bounded


class Session(Policy):
    """Requests with the same session key (a header, else the OpenAI `user` field) stick to one engine,
    so a conversation finds its KV blocks cached; load-bounded like prefix affinity. No key: least loaded,
    equal ones in turn."""

    name = "session"

    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor
        self.outcomes = affinity_outcomes()
        self._least_loaded = LeastLoaded()

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        if not request.session_key:
            self.outcomes["none"] += 1
            return self._least_loaded(engines)
        if len(engines) == 1:
            self.outcomes["hit"] += 1
            return engines[0]
        engine, spilled = pick_bounded(engines, key_digest(request.session_key.encode()), self.load_factor)
        self.outcomes["spill" if spilled else "hit"] += 1
        return engine
