"""kv_aware routing on the engines' real KV-cache events: two real engines (a tiny random Llama on CPU,
small KV caches) behind the real router, on loopback, driven by the openai SDK.

A prompt cached on the engine that prefix hashing would *not* pick is routed there (only the events can
tell); once that engine evicts it, routing follows: the prompt goes where hashing sends it, and the next
request finds it cached there."""

from __future__ import annotations

import random

import grpc
import openai
import pytest

from engine_service.core.config import EngineConfig
from engine_service.server.grpc_server import EngineServer
from engine_service.server.service_config import EngineServiceConfig
from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from router.api.context import CONTEXT
from router.app import start
from router.config import RouterConfig
from router.upstream.kv_index import block_hashes
from router.upstream.policies import RouteRequest
from router.upstream.policies.prefix_affinity import PrefixAffinity
from tests.router.conftest import wait_for

BS = 16
MODEL = "tiny"


async def start_engine(model_dir, port: int = 0) -> EngineServer:
    engine = EngineConfig(
        model=str(model_dir),
        served_model_name=MODEL,
        device="cpu",
        dtype="float32",
        num_kv_blocks=20,  # 320 tokens: three 100-token prompts evict a fourth
        max_model_len=256,
        max_num_seqs=4,
        max_num_batched_tokens=256,
    )
    server = EngineServer(
        EngineServiceConfig(engine=engine, host="127.0.0.1", port=port, metrics_port=0, engine_core="thread")
    )
    await server.start()
    await server.load()
    return server


async def generate(address: str, prompt: list[int]) -> pb.GenerateResponse:
    """A request straight to one engine (not through the router): it caches the prompt there."""
    async with grpc.aio.insecure_channel(address) as channel:
        request = pb.GenerateRequest(
            prompt_token_ids=pb.TokenIds(ids=prompt),
            sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=1),
        )
        return [m async for m in engine_pb2_grpc.EngineServiceStub(channel).Generate(request, timeout=60)][-1]


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40000) for _ in range(n)]


@pytest.fixture
async def stack(tiny_chat_model_dir):
    engines = [await start_engine(tiny_chat_model_dir) for _ in range(2)]
    addresses = [f"127.0.0.1:{e.port}" for e in engines]
    config = RouterConfig(
        host="127.0.0.1",
        port=0,
        engines=tuple(addresses),
        policy="kv_aware",
        health_interval_s=0.05,
        max_backoff_s=0.5,
        first_token_timeout_s=60.0,
    )
    router = await start(config)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{router.addresses[0][1]}/v1", api_key="none", max_retries=0
    )
    ctx = router.app[CONTEXT]
    await wait_for(lambda: len(ctx.registry.ready_for(MODEL)) == 2, 30, "both engines ready")
    await wait_for(
        lambda: all(e.kv_index.live for e in ctx.registry.engines), 30, "both engines' KV events followed"
    )
    yield engines, addresses, client, ctx
    await client.close()
    await router.cleanup()
    for engine in engines:
        await engine.stop()


async def test_kv_aware_routes_to_the_real_cache_and_follows_evictions(stack):
    engines, addresses, client, ctx = stack
    by_address = {e.address: e for e in ctx.registry.engines}
    prompt = tokens(1, 100)  # 6 full blocks
    follow_up = prompt + tokens(2, 20)
    route = RouteRequest(follow_up, BS)  # (prefix hashing keys on up to 8 blocks: 7 of follow_up's)
    hashed = (await PrefixAffinity().pick(ctx.registry.engines, route)).address
    holder = next(a for a in addresses if a != hashed)
    served = {a: e for a, e in zip(addresses, engines, strict=True)}

    def prompt_tokens(address: str) -> int:
        return served[address].engine.stats.num_prompt_tokens

    def indexed(address: str, prompt: list[int]) -> int:
        index = by_address[address].kv_index
        return sum(1 for h in block_hashes(prompt, BS) if h in index)

    # Cached on the engine hashing would not pick: the router learns it from the events alone.
    await generate(holder, prompt)
    await wait_for(lambda: indexed(holder, prompt) == 6, 10, "the holder's stored blocks")
    scraped = ctx.metrics.render().decode()
    assert f'pagoda_router_engine_kv_cached_blocks{{engine="{holder}"}} 6.0' in scraped
    before = {a: prompt_tokens(a) for a in addresses}
    done = await client.completions.create(model=MODEL, prompt=follow_up, max_tokens=2, temperature=0)
    assert done.usage.prompt_tokens_details.cached_tokens == 96
    assert prompt_tokens(holder) > before[holder] and prompt_tokens(hashed) == before[hashed]
    assert ctx.dispatcher.policy.outcomes["hit"] == 1

    # The holder's cache fills with other prompts: the prompt's blocks are evicted, and the router sees it.
    for seed in (3, 4, 5):
        await generate(holder, tokens(seed, 100))
    await wait_for(lambda: indexed(holder, prompt) == 0, 10, "the holder's evictions")
    before = {a: prompt_tokens(a) for a in addresses}
    done = await client.completions.create(model=MODEL, prompt=follow_up, max_tokens=2, temperature=0)
    assert done.usage.prompt_tokens_details is None or not done.usage.prompt_tokens_details.cached_tokens
    assert prompt_tokens(hashed) > before[hashed] and prompt_tokens(holder) == before[holder]
    assert ctx.dispatcher.policy.outcomes["none"] >= 1

    # That request cached it where it ran: the next turn of the conversation is a hit there.
    await wait_for(lambda: indexed(hashed, follow_up) == 7, 10, "the new holder's stored blocks")
    done = await client.completions.create(
        model=MODEL, prompt=follow_up + tokens(6, 10), max_tokens=2, temperature=0
    )
    assert done.usage.prompt_tokens_details.cached_tokens == 112
    assert ctx.dispatcher.policy.outcomes["hit"] == 2


async def test_a_restarted_engine_is_resubscribed_with_a_fresh_snapshot(stack, tiny_chat_model_dir):
    engines, addresses, client, ctx = stack
    engine = ctx.registry.engines[0]
    index = engine.kv_index
    await generate(engine.address, tokens(7, 40))
    await wait_for(lambda: len(index) == 2, 10, "the stored blocks")
    snapshots = index.num_snapshots
    # The engine restarts on the same address: the stream ends, the index goes stale at once (the policy
    # stops trusting it), and once the new engine serves, the router subscribes again and takes its
    # snapshot: an empty cache.
    i = next(i for i, a in enumerate(addresses) if a == engine.address)
    port = engines[i].port
    await engines[i].stop()
    await wait_for(lambda: not index.live, 5, "the stream's end")
    engines[i] = await start_engine(tiny_chat_model_dir, port)
    await wait_for(lambda: index.live and index.num_snapshots > snapshots, 20, "a fresh snapshot")
    assert len(index) == 0
