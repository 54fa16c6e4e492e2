from __future__ import annotations

import itertools
from collections.abc import Sequence

from router.upstream.policies.base import Policy, Routable, RouteRequest


class RoundRobin(Policy):
    """Each engine in turn, whatever the load."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        # Sorted so that the order survives engines appearing and leaving between calls.
        ordered = sorted(engines, key=lambda e: e.address)
        return ordered[next(self._counter) % len(ordered)]
