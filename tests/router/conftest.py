"""Router test fixtures: scripted engines and tokenizer on loopback, the real router app in front of them,
and real clients (the openai SDK, aiohttp)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import aiohttp
import openai
import pytest
from aiohttp import web
from router_fakes import Script, ScriptedEngine, ScriptedTokenizer, start_engine, start_tokenizer

from router.api.context import CONTEXT, RouterContext
from router.app import start
from router.config import RouterConfig

# Fast health checks so that ejection and recovery fit in a test.
TEST_CONFIG = RouterConfig(
    host="127.0.0.1",
    port=0,
    health_interval_s=0.05,
    probe_timeout_s=0.5,
    max_backoff_s=0.5,
    connect_timeout_s=1.0,
    first_token_timeout_s=2.0,
)


async def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Stack:
    runner: web.AppRunner
    tokenizer: ScriptedTokenizer
    engines: list[ScriptedEngine]
    engine_servers: list
    engine_ports: list[int]
    servers: list = field(default_factory=list)
    clients: list = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ctx(self) -> RouterContext:
        return self.runner.app[CONTEXT]

    def client(self, api_key: str = "unused", **kwargs) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    async def post(self, path: str, body=None, *, data=None, headers=None) -> tuple[int, dict, dict]:
        """Raw HTTP: (status, parsed JSON body, headers)."""
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + path, json=body, data=data, headers=headers) as r:
                return r.status, await r.json(content_type=None), dict(r.headers)

    async def get(self, path: str, headers=None) -> tuple[int, object, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.url + path, headers=headers) as r:
                text = await r.text()
                try:
                    import json

                    body = json.loads(text)
                except ValueError:
                    body = text
                return r.status, body, dict(r.headers)


@pytest.fixture
async def make_stack():
    stacks: list[Stack] = []

    async def make(
        scripts: list[Script] | None = None,
        *,
        wait_ready: bool = True,
        engine_hosts: list[str] | None = None,
        engine_port: int = 0,
        static: bool = True,
        **overrides,
    ) -> Stack:
        """Scripted engines (on engine_hosts, all on engine_port when given) and a router in front of them,
        which knows them from its static list unless `static` is False (discovery tests)."""
        scripts = scripts if scripts is not None else [Script()]
        hosts = engine_hosts or ["127.0.0.1"] * len(scripts)
        tok_server, tok_port, tokenizer = await start_tokenizer()
        started = [await start_engine(s, h, engine_port) for s, h in zip(scripts, hosts, strict=True)]
        config = replace(
            TEST_CONFIG,
            tokenizer=f"127.0.0.1:{tok_port}",
            engines=tuple(f"{h}:{port}" for h, (_, port, _) in zip(hosts, started, strict=True))
            if static
            else (),
            **overrides,
        )
        runner = await start(config)
        stack = Stack(
            runner=runner,
            tokenizer=tokenizer,
            engines=[e for _, _, e in started],
            engine_servers=[s for s, _, _ in started],
            engine_ports=[p for _, p, _ in started],
            servers=[tok_server],
        )
        stacks.append(stack)
        if wait_ready:
            registry = stack.ctx.registry
            await wait_for(
                lambda: sum(e.ready for e in registry.engines) == len(scripts), what="engines ready"
            )
        return stack

    yield make
    for stack in stacks:
        for client in stack.clients:
            await client.close()
        await stack.runner.cleanup()
        for server in stack.engine_servers + stack.servers:
            await server.stop(0)


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()
