from __future__ import annotations

from collections.abc import Sequence

from router.upstream.discovery import Update


class StaticDiscovery:
    """`--engine host:port`, repeated: the set never changes."""

    def __init__(self, addresses: Sequence[str]):
        self.addresses = tuple(addresses)

    async def run(self, update: Update) -> None:
        update(self.addresses)
