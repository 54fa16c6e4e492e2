"""Following one engine's `SubscribeKvEvents` stream into its KvIndex, for the kv_aware policy.

    connect ──▶ snapshot (one or more messages) ──▶ index live ──▶ batch seq+1, seq+2, ... applied
       ▲                                                                  │ stream ends, fails, or skips
       └────────── backoff (doubles from `retry_s` up to `max_retry_s`) ◀── index stale

While the index is stale the policy does not trust it (it falls back to prefix hashing). The engine resends
a snapshot in the same stream when this router falls behind, which the index takes as a fresh start.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from pagoda.engine.v1 import engine_pb2
from router.upstream.kv_index import KvIndex

log = logging.getLogger(__name__)


class KvEventFollower:
    """Keeps `engine.kv_index` in step with the engine's event stream until cancelled."""

    def __init__(self, engine, retry_s: float = 1.0, max_retry_s: float = 10.0):
        self.engine = engine  # router.upstream.engines.Engine: its stub changes when the channel is reopened
        self.index: KvIndex = engine.kv_index
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s

    async def run(self) -> None:
        backoff = self.retry_s
        while True:
            snapshots = self.index.num_snapshots
            try:
                await self._follow()
                reason = "the stream ended"
            except grpc.aio.AioRpcError as err:
                reason = f"{err.code().name}: {err.details()}"
            finally:
                self.index.stale()
            if self.index.num_snapshots > snapshots:  # it was live: try again soon
                log.info("KV events of %s stopped (%s); resubscribing", self.engine.address, reason)
                backoff = self.retry_s
            else:
                log.debug("KV events of %s unavailable (%s)", self.engine.address, reason)
            await asyncio.sleep(backoff)
            backoff = min(self.max_retry_s, backoff * 2)

    async def _follow(self) -> None:
        # The gRPC token too, when engines ask for one (pagoda/grpc_auth.py).
        call = self.engine.stub.SubscribeKvEvents(
            engine_pb2.SubscribeKvEventsRequest(), metadata=self.engine.metadata
        )
        index = self.index
        try:
            async for message in call:
                if message.WhichOneof("message") == "snapshot":
                    s = message.snapshot
                    ok = index.snapshot_chunk(s.seq, s.block_size, s.block_hashes, s.last)
                else:
                    ok = index.apply_batch(message.batch.seq, message.batch.events)
                if not ok:
                    log.warning(
                        "KV events of %s out of step (a gap, or too many blocks): resubscribing",
                        self.engine.address,
                    )
                    return
        finally:
            call.cancel()
