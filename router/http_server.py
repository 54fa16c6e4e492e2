"""The router's listening socket: a cap on open connections, refused cleanly, within the file descriptors.

Every connection costs a descriptor. When they run out, `accept()` fails with EMFILE and asyncio logs a
traceback per attempt (hundreds a second), while every real request waits. So the router counts its
connections and stays below the descriptor limit: past `max_connections`, a new connection gets a short
`503` with `Retry-After` and is closed; past that many refusals in flight, it is closed at once.

Idle connections, and connections that take too long to send their request's headers, are closed by
aiohttp's keep-alive timer (`keepalive_timeout`): it starts when a connection opens and again after each
response, and arriving bytes do not reset it, so a client trickling its headers is cut like an idle one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource

from aiohttp import web

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections (gRPC channels, the body pool, log files), and
# for connections being refused (each holds one for up to REFUSAL_LINGER_S): at most 256 each, and at
# most a quarter and an eighth of a small limit.
FD_RESERVE = 256
MAX_REFUSING = 256
REFUSAL_LINGER_S = 0.5  # read (and drop) what the client sends, so that closing does not reset the 503

_REFUSAL_BODY = json.dumps(
    {
        "error": {
            "message": "The server has too many open connections; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def raise_fd_limit() -> int:
    """Raises the soft descriptor limit to the hard one (as servers do); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def refusal_cap() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_REFUSING if soft == resource.RLIM_INFINITY else max(2, min(MAX_REFUSING, soft // 8))


def connection_cap(configured: int | None) -> int:
    """The connections the router accepts at once: as configured, but always within the descriptors, so
    that accept() never fails for want of one. Besides the served ones, descriptors go to the reserve,
    to refusals in flight, and to the accept() bursts not yet refused: asyncio accepts up to `backlog`
    connections per wake-up (CappedSite passes refusal_cap() as backlog), makes their transports a loop
    iteration later, and a refused one's descriptor closes another iteration after its abort(), so up to
    three bursts hold descriptors beside the refusals lingering."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        within = 1 << 20
    else:
        within = max(4, soft - min(FD_RESERVE, soft // 4) - 4 * refusal_cap())
    return min(configured, within) if configured is not None else within


class CappedSite(web.TCPSite):
    """A TCPSite that refuses connections past `max_connections`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int, **kwargs):
        # The listen backlog is also how many connections one accept() burst takes: keep it within the
        # descriptors set aside for it (connection_cap).
        kwargs["backlog"] = min(kwargs.get("backlog", 128), refusal_cap())
        super().__init__(runner, host, port, **kwargs)
        self.max_connections = max_connections
        self.open = 0  # connections being served
        self.refusing = 0  # connections being refused
        self.refused = 0  # in all
        self.max_refusing = refusal_cap()

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol():
            if self.open >= self.max_connections:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning(
                        "connection cap (%d) reached: %d connections refused so far",
                        self.max_connections,
                        self.refused,
                    )
                return _Refusal(self)
            self.open += 1
            return _Counted(server(), self)

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it lives."""

    __slots__ = ("_inner", "_site")

    def __init__(self, inner: asyncio.Protocol, site: CappedSite):
        self._inner = inner
        self._site = site

    def connection_made(self, transport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        self._site.open -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refusal(asyncio.Protocol):
    """Answers 503 at once, drops what the client sends, and closes shortly after."""

    def __init__(self, site: CappedSite):
        self._site = site
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._site.refusing += 1
        if self._site.refusing > self._site.max_refusing:  # a flood: no time for manners
            transport.abort()
            return
        transport.write(REFUSAL)
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc) -> None:
        self._site.refusing -= 1
        if self._timer is not None:
            self._timer.cancel()
