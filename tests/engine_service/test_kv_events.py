"""SubscribeKvEvents over real gRPC: a snapshot first, then numbered batches of stored and evicted blocks
whose hashes the router recomputes from token ids alone; late subscribers and resyncs."""

from __future__ import annotations

import asyncio
import queue
import threading

import grpc
import pytest

from engine_service.engine.kv_event_hub import KvEventBatch, KvEventHub, KvSnapshot
from pagoda.engine.v1 import engine_pb2 as pb
from router.upstream.kv_index import block_hashes
from tests.engine_service.server_thread import ServerThread, tiny_engine

BS = 16


class Subscriber:
    """A SubscribeKvEvents stream read by a thread into a queue (so that reads can time out)."""

    def __init__(self, stub, include_token_ids: bool = False):
        self.call = stub.SubscribeKvEvents(
            pb.SubscribeKvEventsRequest(include_token_ids=include_token_ids), timeout=60
        )
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as err:
            self.messages.put(err)

    def next(self, timeout: float = 20) -> pb.KvEventsResponse:
        message = self.messages.get(timeout=timeout)
        if isinstance(message, grpc.RpcError):
            raise message
        return message

    def snapshot(self) -> tuple[int, set[bytes]]:
        hashes: set[bytes] = set()
        while True:
            message = self.next()
            assert message.WhichOneof("message") == "snapshot"
            assert message.snapshot.block_size == BS
            hashes.update(message.snapshot.block_hashes)
            if message.snapshot.last:
                return message.snapshot.seq, hashes

    def close(self) -> None:
        self.call.cancel()


def generate(stub, prompt: list[int], max_tokens: int, salt: str = "") -> list[int]:
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=prompt),
        sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
        cache_salt=salt,
    )
    return [t for m in stub.Generate(request, timeout=30) for t in m.token_ids]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    # 8 blocks of 16 tokens: a few prompts fill the cache and evict the first one's blocks.
    with ServerThread(tiny_engine(tiny_model_dir, num_kv_blocks=8, max_model_len=128)) as s:
        yield s


def test_snapshot_then_exact_hashes_then_evictions_and_late_snapshots(server):
    early = Subscriber(server.stub, include_token_ids=True)
    seq, cached = early.snapshot()
    assert cached == set()  # the warm-up's blocks are not reported as cached: the stream starts empty

    prompt = list(range(1000, 1040))  # 2 full blocks; the 8 tokens generated fill a third
    output = generate(server.stub, prompt, max_tokens=10, salt="tenant-a")
    tokens = prompt + output
    expected = list(block_hashes(tokens, BS, "tenant-a"))  # the router's own computation
    assert len(expected) == 3
    assert expected != list(block_hashes(tokens, BS))  # the salt is part of every hash

    stored: list[pb.KvBlocksStored] = []
    while sum(len(s.block_hashes) for s in stored) < 3:
        batch = early.next().batch
        assert batch.seq == seq + 1  # numbered without gaps
        seq = batch.seq
        stored += [e.stored for e in batch.events if e.WhichOneof("event") == "stored"]
    assert [h for s in stored for h in s.block_hashes] == expected
    assert stored[0].parent_block_hash == b""
    assert [t for s in stored for t in s.token_ids] == tokens[: 3 * BS]

    late = Subscriber(server.stub)
    late_seq, late_cached = late.snapshot()
    assert (late_seq, late_cached) == (seq, set(expected))

    # Other prompts take every block: the first prompt's blocks are evicted, tail first.
    removed: list[bytes] = []
    for i in range(3):
        generate(server.stub, list(range(2000 + 100 * i, 2000 + 100 * i + 60)), max_tokens=4)
    while not set(expected) <= set(removed):
        batch = early.next().batch
        assert batch.seq == seq + 1
        seq = batch.seq
        for event in batch.events:
            if event.WhichOneof("event") == "removed":
                removed += event.removed.block_hashes
    assert [h for h in removed if h in expected] == expected[::-1]

    # The late subscriber saw the same batches; a third one's snapshot has none of the evicted blocks.
    while True:
        message = late.next()
        if message.batch.seq == seq:
            break
    _, now_cached = Subscriber(server.stub).snapshot()
    assert now_cached and not now_cached & set(expected)
    early.close()
    late.close()


def test_a_subscriber_is_refused_while_the_engine_loads(tiny_model_dir):
    from engine_service.server.servicer import EngineServicer
    from engine_service.server.serving_state import ServingState

    async def main():
        server = grpc.aio.server()
        from pagoda.engine.v1 import engine_pb2_grpc

        engine_pb2_grpc.add_EngineServiceServicer_to_server(EngineServicer(ServingState()), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = engine_pb2_grpc.EngineServiceStub(channel).SubscribeKvEvents(pb.SubscribeKvEventsRequest())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        await server.stop(None)

    asyncio.run(main())


# ---- the hub alone --------------------------------------------------------------------------------------
def stored(key: bytes, parent: bytes | None = None) -> tuple:
    return ("stored", key, parent, [1, 2])


async def test_hub_groups_chains_and_resyncs_a_slow_subscriber():
    hub = KvEventHub(block_size=2, max_queued=2)
    sub = hub.subscribe()
    assert await sub.next() == KvSnapshot(0, [])
    hub.publish([stored(b"a"), stored(b"b", b"a"), ("removed", b"x"), ("removed", b"y")])
    batch = await sub.next()
    assert isinstance(batch, KvEventBatch) and batch.seq == 1
    assert batch.events == [("stored", [b"a", b"b"], None, [1, 2, 1, 2]), ("removed", [b"x", b"y"])]
    hub.publish([])  # a step without events sends nothing
    for key in (b"c", b"d", b"e"):  # three batches: one more than the subscriber may hold
        hub.publish([stored(key)])
    resync = await sub.next()
    assert isinstance(resync, KvSnapshot) and resync.seq == 4
    assert set(resync.keys) == {b"a", b"b", b"c", b"d", b"e"}
    assert sub.num_resyncs == 1
    hub.publish([("cleared",)])
    assert (await sub.next()).events == [("cleared",)]
    assert hub.snapshot() == KvSnapshot(5, [])
    hub.close(RuntimeError("engine failed"))
    with pytest.raises(RuntimeError, match="engine failed"):
        await sub.next()
    with pytest.raises(RuntimeError, match="engine failed"):
        hub.subscribe()


async def test_hub_bounds_its_subscribers():
    hub = KvEventHub(block_size=2, max_subscribers=1)
    sub = hub.subscribe()
    from engine_service.engine.errors import EngineOverloadedError

    with pytest.raises(EngineOverloadedError):
        hub.subscribe()
    sub.close()
    hub.subscribe()
