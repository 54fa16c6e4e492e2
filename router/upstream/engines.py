"""The engine registry: every discovered engine's channel, model, load and health.

Discovery sources report address sets; the registry keeps one `Engine` per address in their union. Each
engine is probed every `interval_s` (`GetModelInfo` once, then `GetServerInfo` for the load signal):

    discovered --probe ok--> ready --draining, probe or call failures--> ejected --backoff, probe ok--> ready
                                                                         (the backoff doubles per failure)

An engine that stops answering probes is ejected and its live streams are ended (so no client waits on a
hung engine); an engine that discovery drops keeps serving its live streams for `drain_grace_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from router.errors import model_not_found, no_engine
from router.upstream.channels import ChannelFactory
from router.upstream.kv_events import KvEventFollower
from router.upstream.kv_index import KvIndex
from router.upstream.model_card import ModelCard
from router.upstream.multiplex import CHANNEL_OPTIONS as MULTIPLEX_OPTIONS
from router.upstream.multiplex import Multiplexer

log = logging.getLogger(__name__)

# A full KV cache means preemptions for whatever arrives next: weigh it like a few queued requests.
KV_FULL_WEIGHT = 4.0


class Engine:
    """One engine endpoint. `ready` is what routing looks at; the rest feeds `load` and the health state."""

    def __init__(self, address: str, channel: grpc.aio.Channel, metadata: tuple = ()):
        self.address = address
        self.metadata = metadata  # on every call: the gRPC token (pagoda/grpc_auth.py), if any
        self.multiplexer = Multiplexer(address, metadata)  # its call opens with the first generation
        self.use_channel(channel)
        self.card: ModelCard | None = None
        self.info = engine_pb2.ServerInfo()
        self.num_outstanding = 0  # this router's requests in flight on the engine
        self.ejected = True  # until the first probe succeeds
        self.ever_ready = False
        self.ejected_until = 0.0
        self.backoff_s = 0.0
        self.probe_failures = 0
        self.removed = False
        self.streams: set = set()  # live EngineStreams, ended when the engine is found hung
        self.kv_index: KvIndex | None = None  # its prefix cache, from its KV events (the kv_aware policy)

    @property
    def ready(self) -> bool:
        return self.card is not None and not self.ejected and not self.info.draining and not self.removed

    @property
    def load(self) -> float:
        return self.num_outstanding + self.info.num_waiting + KV_FULL_WEIGHT * self.info.kv_cache_usage

    def use_channel(self, channel: grpc.aio.Channel) -> None:
        """Calls from now on go over `channel` (streams already open keep theirs)."""
        self.channel = channel
        self.stub = engine_pb2_grpc.EngineServiceStub(channel)
        self.multiplexer.use_stub(self.stub)

    def eject(self, reason: str, max_backoff_s: float) -> None:
        # An engine still starting up is probed every interval, so it serves as soon as it is up;
        # one that served and then failed backs off.
        if self.ever_ready:
            self.backoff_s = min(max_backoff_s, self.backoff_s * 2 or 1.0)
            self.ejected_until = time.monotonic() + self.backoff_s
        if not self.ejected:
            log.warning("engine %s ejected for %.0fs: %s", self.address, self.backoff_s, reason)
        self.ejected = True

    def abandon_streams(self) -> None:
        for stream in list(self.streams):
            stream.abandon()

    def __repr__(self) -> str:
        return f"Engine({self.address}, ready={self.ready}, load={self.load:.2f})"


class EngineRegistry:
    def __init__(
        self,
        *,
        interval_s: float,
        probe_timeout_s: float,
        failures_to_eject: int,
        max_backoff_s: float,
        drain_grace_s: float,
        connect: Callable[[str, list], grpc.aio.Channel] | None = None,
        kv_events: bool = False,
    ):
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self.failures_to_eject = failures_to_eject
        self.max_backoff_s = max_backoff_s
        self.drain_grace_s = drain_grace_s
        self._connect = connect or ChannelFactory()  # plaintext unless the router has TLS flags
        self._engines: dict[str, Engine] = {}
        self._sources: dict[str, frozenset[str]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self.kv_events = kv_events  # follow each engine's KV-cache events (kv_events.py)
        self._kv_tasks: dict[str, asyncio.Task] = {}
        self._closing: set[asyncio.Task] = set()

    # -- discovery side ---------------------------------------------------------------------------------

    def update(self, source: str, addresses: Iterable[str]) -> None:
        """Replaces the address set one discovery source reports; the registry follows their union."""
        self._sources[source] = frozenset(addresses)
        wanted = frozenset().union(*self._sources.values())
        for address in wanted - self._engines.keys():
            metadata = getattr(self._connect, "metadata", ())
            channel = self._connect(address, MULTIPLEX_OPTIONS)
            engine = self._engines[address] = Engine(address, channel, metadata)
            self._tasks[address] = asyncio.create_task(self._probe_loop(engine), name=f"probe {address}")
            if self.kv_events:
                engine.kv_index = KvIndex()
                follower = KvEventFollower(engine, self.interval_s, self.max_backoff_s)
                self._kv_tasks[address] = asyncio.create_task(follower.run(), name=f"kv events {address}")
            log.info("engine %s discovered", address)
        for address in self._engines.keys() - wanted:
            self._remove(address)

    def _remove(self, address: str) -> None:
        engine = self._engines.pop(address)
        engine.removed = True
        self._tasks.pop(address).cancel()
        kv_task = self._kv_tasks.pop(address, None)
        if kv_task is not None:
            kv_task.cancel()
        log.info("engine %s removed; %d live requests keep running", address, engine.num_outstanding)
        self._close_later(engine.channel)

    def reconnect(self) -> None:
        """A new channel to every engine (the router's TLS files changed): new calls present the new
        certificate, streams already open finish on the old channel."""
        for engine in self._engines.values():
            old = engine.channel
            engine.use_channel(self._connect(engine.address, MULTIPLEX_OPTIONS))
            self._close_later(old)

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        # close(grace) refuses new calls at once and cancels the live ones only after the grace period.
        task = asyncio.create_task(channel.close(grace=self.drain_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in (*self._tasks.values(), *self._kv_tasks.values(), *self._closing):
            task.cancel()
        await asyncio.gather(
            *self._tasks.values(), *self._kv_tasks.values(), *self._closing, return_exceptions=True
        )
        await asyncio.gather(
            *(e.channel.close(grace=None) for e in self._engines.values()), return_exceptions=True
        )
        self._engines.clear()

    # -- routing side -----------------------------------------------------------------------------------

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    def ready_for(self, model: str) -> list[Engine]:
        return [e for e in self._engines.values() if e.ready and e.card.name == model]

    def any_ready(self) -> bool:
        return any(e.ready for e in self._engines.values())

    def models(self) -> dict[str, ModelCard]:
        """Every model a known engine serves, ready or not (so a model briefly without engines is a 503,
        not a 404)."""
        return {e.card.name: e.card for e in self._engines.values() if e.card is not None}

    def resolve(self, model: str) -> ModelCard:
        """The model's card, or the error to answer with: 404 unknown model, 503 nothing ready."""
        cards = [e.card for e in self._engines.values() if e.card is not None and e.card.name == model]
        if not cards:
            raise model_not_found(model) if self.any_ready() else no_engine()
        if not any(e.ready for e in self._engines.values() if e.card is not None and e.card.name == model):
            raise no_engine(model)
        return cards[0]

    def request_failed(self, engine: Engine, reason: str) -> None:
        """A call failed in a way that says the engine is down: stop sending to it until a probe succeeds."""
        engine.eject(reason, self.max_backoff_s)

    # -- health -----------------------------------------------------------------------------------------

    async def _probe_loop(self, engine: Engine) -> None:
        while True:
            if time.monotonic() >= engine.ejected_until:
                await self._probe(engine)
            await asyncio.sleep(self.interval_s)

    async def _probe(self, engine: Engine) -> None:
        try:
            if engine.ejected:
                # Fetched again after every ejection: the address may now be a different engine.
                info = await engine.stub.GetModelInfo(
                    engine_pb2.GetModelInfoRequest(), timeout=self.probe_timeout_s, metadata=engine.metadata
                )
                engine.card = ModelCard.from_pb(info)
            engine.info = await engine.stub.GetServerInfo(
                engine_pb2.GetServerInfoRequest(), timeout=self.probe_timeout_s, metadata=engine.metadata
            )
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and not engine.ejected:
                return  # busy (its backlog of calls is full), not dead: it answered; keep its last figures
            engine.probe_failures += 1
            if engine.probe_failures >= self.failures_to_eject or engine.ejected:
                was_serving = not engine.ejected
                engine.eject(f"probe failed: {err.code().name} {err.details()}", self.max_backoff_s)
                if was_serving:  # it stopped answering: its streams would wait forever
                    engine.abandon_streams()
            return
        engine.probe_failures = 0
        if engine.ejected:
            log.info("engine %s ready: model %s", engine.address, engine.card.name)
            engine.ejected = False
            engine.ever_ready = True
            engine.backoff_s = 0.0
