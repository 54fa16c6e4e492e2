"""The interface every routing policy implements.

A policy sees only the engines that may take the request (ready, serving its model, not yet tried for
it) and picks one. Policies hold no network state, so they are tested with stub engine lists.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol


class Routable(Protocol):
    """What a policy may look at: `Engine` satisfies it, and so do the stubs in tests."""

    address: str
    num_outstanding: int

    @property
    def load(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RouteRequest:
    token_ids: Sequence[int]  # the prompt, for prefix affinity
    block_size: int = 16  # the model's KV block size
    session_key: str | None = None  # for the session policy
    cache_salt: str = ""  # the engine's prefix-cache salt: requests with different salts share no block


class Policy(ABC):
    name: ClassVar[str]
    # Affinity policies count where their picks went, for the router's metrics: "hit" (the key's own
    # engine), "spill" (it was over the load bound), "none" (no key: the least loaded). None: no affinity.
    outcomes: dict[str, int] | None = None

    @abstractmethod
    async def pick(self, engines: Sequence[Routable], request: RouteRequest) -> Routable:
        """Returns one of `engines` (never empty)."""


def affinity_outcomes() -> dict[str, int]:
    return {"hit": 0, "spill": 0, "none": 0}


class LeastLoaded:
    """The least loaded engine, ties taken in turn: equally loaded engines (idle ones, typically) are
    walked in address order from a start that moves on with every pick. Without it, requests that
    arrive one at a time always found the same first engine idle (16 short prompts landed 13/2/1 on
    three engines). Deterministic: the same sequence of picks over the same engines gives the same
    engines, which tests and every router replica can reproduce."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def __call__(self, engines: Sequence[Routable]) -> Routable:
        best = min((e.load, e.num_outstanding) for e in engines)
        tied = sorted((e for e in engines if (e.load, e.num_outstanding) == best), key=lambda e: e.address)
        return tied[next(self._turn) % len(tied)]
