from __future__ import annotations

import random
from collections.abc import Sequence

from router.upstream.policies.base import Policy, Routable, RouteRequest


class PowerOfTwo(Policy):
    """The less loaded of two engines drawn at random: near least-loaded balance without herding onto
    the one engine every router currently believes is idle."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        if len(engines) == 1:
            return engines[0]
        a, b = self._rng.sample(list(engines), 2)
        return a if a.load <= b.load else b
