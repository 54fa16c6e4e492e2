"""The load generator of `pagoda bench grpc`: concurrent Generate streams, in one or several processes.

    elapsed, stats = drive(address, requests, temperature, concurrency, channels, processes=4)

One asyncio process parses every streamed message of every stream in Python; at tens of thousands of
tokens a second that process can fall behind, and then a finished stream's next request goes out late and
the engine runs with fewer requests than `concurrency`: the figure measures the client. With
`processes > 1` the requests and the streams are dealt out over that many spawned processes
(pagoda.bench.client_processes), which start together once all are ready. `Occupancy` polls the engine's
GetServerInfo during the run: its mean running count (time-weighted, prefill phases included) shows
whether the clients kept the batch full.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from pagoda.bench import client_processes, workloads


@dataclass
class StreamStats:
    sent: float  # time.monotonic(): comparable across processes
    first: float | None = None
    last: float | None = None
    num_tokens: int = 0
    num_messages: int = 0
    errors: list[str] = field(default_factory=list)


async def wait_serving(address: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine at {address} was not SERVING within {timeout:.0f} s")
            await asyncio.sleep(0.5)


def drive(
    address: str,
    requests: list[workloads.Request],
    temperature: float,
    concurrency: int,
    channels: int,
    processes: int = 1,
) -> tuple[float, list[StreamStats]]:
    """Streams every request (at most `concurrency` at once); returns the wall time and per-request stats
    in the order of `requests`."""
    processes = max(1, min(processes, concurrency, len(requests)))
    if processes == 1:
        return asyncio.run(_drive(address, requests, temperature, concurrency, channels, None))
    shares = [
        (
            address,
            share,
            temperature,
            concurrency // processes + (k < concurrency % processes),
            max(1, channels // processes),
        )
        for k, share in enumerate(client_processes.deal(requests, processes))
    ]
    elapsed, parts = client_processes.run(_worker, shares, timeout_s=3600)
    return elapsed, client_processes.merge(parts, len(requests))


def _worker(k, address, requests, temperature, concurrency, channels, ready, results) -> None:
    _, stats = asyncio.run(_drive(address, requests, temperature, concurrency, channels, ready, tag=f"w{k}"))
    results.put((k, (time.monotonic(), stats)))


async def _drive(address, requests, temperature, concurrency, channels, ready, tag: str = "p"):
    """One process's streams; with `ready` (a Barrier) they start once every process has its channels."""
    import grpc

    from pagoda.engine.v1 import engine_pb2 as pb
    from pagoda.engine.v1 import engine_pb2_grpc

    # Separate connections: one HTTP/2 connection serializes all its streams on one client I/O path.
    chans = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [engine_pb2_grpc.EngineServiceStub(c) for c in chans]
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, r: workloads.Request) -> StreamStats:
        req = pb.GenerateRequest(
            request_id=f"bench-{tag}-{i}",
            prompt_token_ids=pb.TokenIds(ids=r.prompt_token_ids),
            sampling_params=pb.SamplingParams(
                max_tokens=r.max_tokens, temperature=temperature, ignore_eos=True
            ),
        )
        async with gate:
            s = StreamStats(sent=time.monotonic())
            try:
                async for msg in stubs[i % channels].Generate(req):
                    now = time.monotonic()
                    if msg.token_ids and s.first is None:
                        s.first = now
                    s.last = now
                    s.num_tokens += len(msg.token_ids)
                    s.num_messages += 1
            except grpc.aio.AioRpcError as e:
                s.errors.append(f"{e.code().name}: {e.details()}")
            return s

    try:
        for c in chans:
            await c.channel_ready()
        if ready is not None:
            await asyncio.to_thread(ready.wait, 120)
        t0 = time.monotonic()
        stats = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        elapsed = time.monotonic() - t0
    finally:
        for c in chans:
            await c.close()
    return elapsed, list(stats)


class Occupancy:
    """Polls the engine's GetServerInfo every `interval_s` from a thread while in a `with` block: the mean
    number of running and waiting requests over the run, and the engine steps it took."""

    def __init__(self, address: str, interval_s: float = 0.05):
        self.address, self.interval_s = address, interval_s
        self.running: list[int] = []
        self.waiting: list[int] = []
        self.num_steps: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="occupancy", daemon=True)

    def __enter__(self) -> Occupancy:
        self._steps0 = self._read_steps()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        steps1 = self._read_steps()
        if self._steps0 is not None and steps1 is not None:
            self.num_steps = steps1 - self._steps0

    def _read_steps(self) -> int | None:
        import grpc

        from pagoda.engine.v1 import engine_pb2 as pb
        from pagoda.engine.v1 import engine_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            try:
                return (
                    engine_pb2_grpc.EngineServiceStub(channel)
                    .GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
                    .num_steps
                )
            except grpc.RpcError:
                return None

    def _run(self) -> None:
        import grpc

        from pagoda.engine.v1 import engine_pb2 as pb
        from pagoda.engine.v1 import engine_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            while not self._stop.wait(self.interval_s):
                try:
                    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=1)
                except grpc.RpcError:
                    continue
                self.running.append(info.num_running)
                self.waiting.append(info.num_waiting)

    def summary(self) -> dict[str, float | int | None]:
        """Over the polls from the first to the last that saw a request (the clients' start-up and the
        idle tail are not the run); `num_steps` over the whole block."""
        busy = [i for i, (r, w) in enumerate(zip(self.running, self.waiting, strict=True)) if r or w]
        window = slice(busy[0], busy[-1] + 1) if busy else slice(0, 0)
        running, waiting = self.running[window], self.waiting[window]
        n = len(running)
        return {
            "num_polls": n,
            "mean_running": round(sum(running) / n, 1) if n else None,
            "p50_running": sorted(running)[n // 2] if n else None,
            "mean_waiting": round(sum(waiting) / n, 1) if n else None,
            "num_steps": self.num_steps,
        }
