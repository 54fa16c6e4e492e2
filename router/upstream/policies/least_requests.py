from __future__ import annotations

import random
from collections.abc import Sequence

from router.upstream.policies.base import Policy, Routable, RouteRequest


class LeastRequests(Policy):
    """The engine with the fewest of this router's requests in flight; ties broken by load, then at random."""

    name = "least_requests"

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        return min(engines, key=lambda e: (e.num_outstanding, e.load, random.random()))
