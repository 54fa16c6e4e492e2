"""The engine's KV-cache events, fanned out to subscribers (routers): a snapshot first, then numbered deltas.

    engine loop   BlockManager events, taken once per step ──StepTimes.kv_events──▶ AsyncEngine._on_step
    front         KvEventHub.publish: the mirror of cached block keys follows them; one numbered batch per
                  step goes to every subscriber's bounded queue
    gRPC          SubscribeKvEvents: Subscription.next() -> snapshot, batch, batch, ...

A subscriber that joins gets the mirror's keys as a snapshot carrying the sequence number of the last batch
it includes, then every later batch in order (seq + 1, seq + 2, ...). One that falls `max_queued` batches
behind is resynced: its queue is dropped and its next item is a fresh snapshot. So the engine loop never
waits on a subscriber and a subscriber's memory is bounded.

The mirror lives here, in the front, from the events alone: the engine loop starts recording with an empty
prefix cache (BlockManager.start_events), so the mirror is exactly the cache's keys after the last batch.
Everything runs on the front's event loop: publish and a snapshot never interleave.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from engine_service.engine.errors import EngineOverloadedError

MAX_QUEUED_BATCHES = 1024  # a subscriber further behind is resynced with a snapshot
MAX_SUBSCRIBERS = 64  # routers (one per replica) and tools; more get RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class KvEventBatch:
    """One engine step's events, grouped: consecutive stored blocks of one chain in one event."""

    seq: int  # 1, 2, ... over the engine's life
    time: float  # time.time() when the front published it
    # ("stored", [keys], parent key | None, [token ids of those blocks]) | ("removed", [keys]) | ("cleared",)
    events: list[tuple]


@dataclass(frozen=True, slots=True)
class KvSnapshot:
    """The keys of every block cached after batch `seq` (0: before any batch)."""

    seq: int
    keys: list[bytes]


class Subscription:
    """One subscriber's view: `next()` gives a snapshot first, then each batch in order."""

    def __init__(self, hub: KvEventHub, max_queued: int):
        self._hub = hub
        self._max_queued = max_queued
        self._queue: deque[KvEventBatch] = deque()
        self._resync = True  # the next item is a snapshot
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self.num_resyncs = 0  # times it fell behind

    def push(self, batch: KvEventBatch) -> None:
        if self._resync:  # the snapshot still to come includes this batch
            return
        if len(self._queue) >= self._max_queued:
            self._queue.clear()
            self._resync = True
            self.num_resyncs += 1
        else:
            self._queue.append(batch)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    async def next(self) -> KvSnapshot | KvEventBatch:
        while True:
            if self._error is not None:
                raise self._error
            if self._resync:
                self._resync = False
                self._queue.clear()
                return self._hub.snapshot()
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class KvEventHub:
    def __init__(
        self, block_size: int, max_queued: int = MAX_QUEUED_BATCHES, max_subscribers: int = MAX_SUBSCRIBERS
    ):
        self.block_size = block_size
        self.seq = 0  # the last batch published
        self._cached: set[bytes] = set()
        self._subscribers: set[Subscription] = set()
        self._max_queued = max_queued
        self._max_subscribers = max_subscribers
        self._error: BaseException | None = None

    def publish(self, events: Iterable[tuple]) -> None:
        """One step's raw events (BlockManager's tuples): update the mirror, send one batch."""
        grouped = self._apply(events)
        if not grouped:
            return
        self.seq += 1
        batch = KvEventBatch(self.seq, time.time(), grouped)
        for subscription in self._subscribers:
            subscription.push(batch)

    def snapshot(self) -> KvSnapshot:
        return KvSnapshot(self.seq, list(self._cached))

    def subscribe(self) -> Subscription:
        if self._error is not None:
            raise self._error
        if len(self._subscribers) >= self._max_subscribers:
            raise EngineOverloadedError(
                f"the engine has {self._max_subscribers} KV-event subscribers already: retry later"
            )
        subscription = Subscription(self, self._max_queued)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def close(self, error: BaseException) -> None:
        """Ends every subscription with `error` (the engine failed or is stopping)."""
        self._error = error
        for subscription in self._subscribers:
            subscription.fail(error)
        self._subscribers.clear()

    def _apply(self, events: Iterable[tuple]) -> list[tuple]:
        cached = self._cached
        out: list[tuple] = []
        for event in events:
            kind = event[0]
            last = out[-1] if out else None
            if kind == "stored":
                _, key, parent, tokens = event
                cached.add(key)
                if last is not None and last[0] == "stored" and last[1][-1] == parent:
                    last[1].append(key)  # the next block of the same chain
                    last[3].extend(tokens)
                else:
                    out.append(("stored", [key], parent, list(tokens)))
            elif kind == "removed":
                cached.discard(event[1])
                if last is not None and last[0] == "removed":
                    last[1].append(event[1])
                else:
                    out.append(("removed", [event[1]]))
            else:  # "cleared"
                cached.clear()
                out.append(("cleared",))
        return out
