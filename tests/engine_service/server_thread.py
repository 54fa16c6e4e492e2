"""An in-process engine service on a free port, run in a background thread with its own event loop.

Tests talk to it through real gRPC stubs; `call` runs a coroutine on the server's loop (drain, stop).
"""

from __future__ import annotations

import asyncio
import threading

import grpc

from engine_service.core.config import EngineConfig
from engine_service.engine.engine import Engine
from engine_service.server.grpc_server import EngineServer
from engine_service.server.service_config import EngineServiceConfig
from pagoda.engine.v1 import engine_pb2_grpc


def tiny_config(model_dir, **kw) -> EngineConfig:
    defaults = dict(
        device="cpu", dtype="float32", num_kv_blocks=64, max_num_seqs=16, max_num_batched_tokens=512
    )
    return EngineConfig(model=str(model_dir), **{**defaults, **kw})


def tiny_engine(model_dir, **kw) -> Engine:
    return Engine(tiny_config(model_dir, **kw))


class ServerThread:
    """Serves a given Engine (its loop in a thread), or builds one from an EngineConfig (per engine_core)."""

    def __init__(self, engine: Engine | EngineConfig, **service_kw):
        defaults = dict(host="127.0.0.1", port=0, metrics_port=0)
        config = engine if isinstance(engine, EngineConfig) else engine.config
        self.config = EngineServiceConfig(engine=config, **{**defaults, **service_kw})
        self.engine = None if isinstance(engine, EngineConfig) else engine
        self.exit_code: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-engine-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError("engine server did not start") from self._error
        self.channel = grpc.insecure_channel(self.address)
        self.stub = engine_pb2_grpc.EngineServiceStub(self.channel)
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()
        if self._loop is not None and self._thread.is_alive():
            self.call(self.server.stop())
        self._thread.join(30)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait(self, timeout: float = 30) -> int | None:
        self._thread.join(timeout)
        return self.exit_code

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.server = EngineServer(self.config)
        try:
            await self.server.start()
            await self.server.load(self.engine)
        except BaseException as e:
            self._error = e
            self._ready.set()
            raise
        self._ready.set()
        self.exit_code = await self.server.wait()
