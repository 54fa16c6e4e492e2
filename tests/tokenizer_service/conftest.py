"""Fixtures for the tokenizer service: real servers on free ports, real gRPC stubs."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import grpc
import pytest

from pagoda.tokenizer.v1 import tokenizer_pb2_grpc
from tokenizer_service.config import TokenizerConfig
from tokenizer_service.server import TokenizerServer


class ServerThread:
    """A TokenizerServer on its own event loop in a thread, so that tests can use blocking stubs."""

    def __init__(self, config: TokenizerConfig, load: bool = True) -> None:
        self.config, self._load = config, load
        self.server = TokenizerServer(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._started.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def run(self, coro):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.server.port}")

    async def _main(self) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
            if self._load:
                await self.server.load()
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._started.set()
        await self._stop.wait()
        await self.server.stop(0)


def config_for(model_dir: Path, **overrides) -> TokenizerConfig:
    return TokenizerConfig(
        **{"model": str(model_dir), "host": "127.0.0.1", "port": 0, "metrics_port": 0, **overrides}
    )


@pytest.fixture(scope="session")
def make_tokenizer_server():
    """make_tokenizer_server(model_dir, load=True, **config) -> a ServerThread to use in `with`."""

    def make(model_dir: Path, load: bool = True, **overrides) -> ServerThread:
        return ServerThread(config_for(model_dir, **overrides), load=load)

    return make


@pytest.fixture(scope="module")
def tokenizer_server(make_tokenizer_server, default_model_dir: Path):
    # Inputs far past the model's context (8192 tokens) are allowed here: the lifecycle tests load a
    # worker with a 126k-token text on purpose. Request templates are allowed (the RPC tests bring some).
    with make_tokenizer_server(
        default_model_dir, workers=2, max_input_tokens=1_000_000, trust_request_chat_template=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def stub(tokenizer_server: ServerThread):
    with tokenizer_server.channel() as channel:
        yield tokenizer_pb2_grpc.TokenizerServiceStub(channel)


@pytest.fixture(scope="module")
def hf_tokenizer(default_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def torch_free_env(tmp_path_factory) -> dict[str, str]:
    """Environment variables for `python -S` that sees this venv's packages except torch (and the
    packages that need it): the router image runs the tokenizer service without torch."""
    site_packages = Path(grpc.__file__).resolve().parents[1]
    view = tmp_path_factory.mktemp("site-packages-without-torch")
    hidden = ("torch", "functorch", "torchgen", "triton", "accelerate", "nvidia")
    for entry in site_packages.iterdir():
        name = entry.name.lower()
        if not any(name == h or name.startswith((f"{h}-", f"{h}_")) for h in hidden):
            (view / entry.name).symlink_to(entry)
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONPATH": f"{repo}{os.pathsep}{view}"}


@pytest.fixture
def free_port() -> int:
    """A port that was free a moment ago (for the metrics endpoint, whose 0 means "off")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
