from __future__ import annotations

from collections.abc import Sequence

from router.policies.base import Policy, Routable, RouteRequest, least_loaded
from router.policies.hashing import key_digest, pick_bounded


class Session(Policy):
    """Requests with the same session key (a header, else the OpenAI `user` field) stick to one engine,
    so a conversation finds its KV blocks cached; load-bounded like prefix affinity. No key: least loaded."""

    name = "session"

    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        if not request.session_key or len(engines) == 1:
            return least_loaded(engines)
        return pick_bounded(engines, key_digest(request.session_key.encode()), self.load_factor)
