from __future__ import annotations

import asyncio
import logging
import socket

from router.upstream.discovery import Update, host_port

log = logging.getLogger(__name__)

# Resolver answers that mean "no such name / no addresses", as a headless Service with no ready pods
# gives: the engine set is empty. Any other failure is transient: keep the last answer.
_NO_ADDRESSES = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class DnsDiscovery:
    """`--engine-dns NAME:PORT`: every address NAME resolves to (a headless Service lists one per ready
    pod), re-resolved every `interval_s`."""

    def __init__(self, target: str, interval_s: float):
        name, sep, port = target.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise ValueError(f"--engine-dns wants NAME:PORT, got {target!r}")
        self.name = name.strip("[]")
        self.port = int(port)
        self.interval_s = interval_s

    async def resolve(self) -> set[str] | None:
        """The current address set, or None when the resolver failed transiently."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            if err.errno in _NO_ADDRESSES:
                return set()
            log.warning("resolving %s failed (keeping the last answer): %s", self.name, err)
            return None
        return {host_port(info[4][0], self.port) for info in infos}

    async def run(self, update: Update) -> None:
        last: set[str] | None = None
        while True:
            addresses = await self.resolve()
            if addresses is not None and addresses != last:
                log.info("%s resolves to %d engines", self.name, len(addresses))
                update(addresses)
                last = addresses
            await asyncio.sleep(self.interval_s)
