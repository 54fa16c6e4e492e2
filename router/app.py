"""The aiohttp application: routes, the auth/error middleware, and the parts that live as long as the app
(the engine registry with its discovery sources, the tokenizer client, metrics)."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator

from aiohttp import web

from pagoda.grpc_auth import read_tokens
from pagoda.telemetry.tracing import setup_tracing
from pagoda.tls import ChannelTls
from router.api import chat, completions, embeddings, invocations, responses, status, tokenize
from router.api.auth import OPEN_PATHS, ApiKeys
from router.api.body import expect_handler
from router.api.body_pool import BodyPool
from router.api.context import CONTEXT, KEY_ID, STARTED, TELEMETRY, RouterContext
from router.api.limits import RequestLimits, StreamLimiter
from router.api.streaming import ClientGone
from router.config import RouterConfig
from router.errors import OpenAIError
from router.http_server import CappedSite, connection_cap
from router.metrics import RouterMetrics
from router.request_telemetry import RouterTelemetry
from router.upstream.channels import ChannelFactory
from router.upstream.discovery.dns import DnsDiscovery
from router.upstream.discovery.static import StaticDiscovery
from router.upstream.dispatch import Dispatcher
from router.upstream.engine_metrics import EngineMetrics
from router.upstream.engines import EngineRegistry
from router.upstream.policies import make_policy
from router.upstream.tokenizer import Tokenizers

log = logging.getLogger(__name__)


def channel_factory(config: RouterConfig) -> ChannelFactory:
    """Channels to engines and tokenizers: TLS and the gRPC token as configured (reads the files now, so a bad
    one fails start-up)."""
    token = read_tokens(config.grpc_token_file)[0] if config.grpc_token_file else None
    return ChannelFactory(channel_tls(config), config.grpc_keepalive_time_s, token)


def channel_tls(config: RouterConfig) -> ChannelTls | None:
    """The router's side of TLS to engines and tokenizers, or None for plaintext."""
    if config.grpc_tls_ca is None:
        return None
    c = config
    return ChannelTls(c.grpc_tls_ca, c.grpc_tls_cert, c.grpc_tls_key, c.grpc_tls_server_name)


def build_app(config: RouterConfig, *, k8s_api_client=None) -> web.Application:
    """`k8s_api_client` overrides the in-cluster / kubeconfig client (tests point it at a fake API server)."""
    api_keys = ApiKeys(config.api_keys, config.api_key_file)
    policy = make_policy(config)
    connect = channel_factory(config)  # reads the TLS and token files now: a bad one fails start-up
    limits = RequestLimits(
        config.max_prompt_tokens,
        config.max_tokens_limit,
        config.max_sequences_per_request,
        config.max_response_bytes,
    )
    app = web.Application(middlewares=[_middleware], client_max_size=config.max_body_bytes)
    app.on_response_prepare.append(_request_id_header)
    tracing = setup_tracing("pagoda-router", config.otlp_endpoint)
    telemetry = RouterTelemetry(tracing, config.log_requests, config.log_prompts)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        registry = EngineRegistry(
            interval_s=config.health_interval_s,
            probe_timeout_s=config.probe_timeout_s,
            failures_to_eject=config.probe_failures_to_eject,
            max_backoff_s=config.max_backoff_s,
            drain_grace_s=config.drain_grace_s,
            connect=connect,
            kv_events=config.policy == "kv_aware",
        )
        metrics = RouterMetrics()
        metrics.watch_engines(lambda: registry.engines)
        metrics.watch_policy(policy)
        metrics.watch_event_loop(asyncio.get_running_loop())
        dispatcher = Dispatcher(
            registry,
            policy,
            metrics,
            max_attempts=config.max_attempts,
            connect_timeout_s=config.connect_timeout_s,
            first_token_timeout_s=config.first_token_timeout_s,
            multiplex=config.engine_stream == "multiplex",
        )
        tokenizers = Tokenizers(
            config.tokenizer, dict(config.model_tokenizers), config.tokenizer_timeout_s, connect
        )
        streams = StreamLimiter(config.max_concurrent_streams_per_key, config.max_concurrent_tokens_per_key)
        body_pool = BodyPool(config.body_parse_workers)
        app[CONTEXT] = RouterContext(
            config,
            registry,
            dispatcher,
            tokenizers,
            metrics,
            api_keys,
            limits,
            streams,
            telemetry,
            body_pool,
            EngineMetrics(config.engine_metrics_urls),
        )
        tasks = [
            asyncio.create_task(source.run(functools.partial(registry.update, name)), name=name)
            for name, source in _discovery_sources(config, k8s_api_client)
        ]
        tasks.append(asyncio.create_task(api_keys.watch_file()))
        if channel_tls(config) is not None:
            watch = _watch_channel_tls(connect, registry, tokenizers, config.tls_reload_interval_s)
            tasks.append(asyncio.create_task(watch, name="grpc-tls-reload"))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await registry.close()
        await tokenizers.close()
        body_pool.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # sends the spans still queued

    app.cleanup_ctx.append(lifecycle)
    # expect_handler: `Expect: 100-continue` with a body over the limit gets its 413 before the body.
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat.chat_completions, expect_handler=expect_handler),
            web.post(
                "/v1/chat/completions/batch", chat.chat_completions_batch, expect_handler=expect_handler
            ),
            web.post("/v1/completions", completions.completions, expect_handler=expect_handler),
            web.post("/v1/responses", responses.create_response, expect_handler=expect_handler),
            web.post("/v1/embeddings", embeddings.embeddings, expect_handler=expect_handler),
            web.post("/invocations", invocations.invocations, expect_handler=expect_handler),
            web.get("/v1/models", status.list_models),
            web.get("/v1/models/{model:.+}", status.get_model),
            web.post("/tokenize", tokenize.tokenize, expect_handler=expect_handler),
            web.post("/detokenize", tokenize.detokenize, expect_handler=expect_handler),
            web.get("/health", status.health),
            web.get("/version", status.version),
        ]
    )
    if config.metrics:
        app.router.add_get("/metrics", status.metrics)
    return app


def _discovery_sources(config: RouterConfig, k8s_api_client) -> list[tuple[str, object]]:
    sources: list[tuple[str, object]] = []
    if config.engines:
        sources.append(("static", StaticDiscovery(config.engines)))
    for target in config.engine_dns:
        sources.append((f"dns:{target}", DnsDiscovery(target, config.dns_interval_s)))
    if config.k8s_service or config.k8s_label_selector:
        from router.upstream.discovery.kubernetes import EndpointSliceDiscovery, load_api_client

        source = EndpointSliceDiscovery(
            k8s_api_client or load_api_client(config.kubeconfig),
            config.k8s_namespace or "default",
            service=config.k8s_service,
            label_selector=config.k8s_label_selector,
            port=config.k8s_engine_port,
            resync_s=config.k8s_resync_s,
        )
        sources.append(("kubernetes", source))
    return sources


async def _watch_channel_tls(
    connect: ChannelFactory, registry: EngineRegistry, tokenizers: Tokenizers, interval_s: float
) -> None:
    """Reopens every channel when the router's gRPC TLS files change (a certificate renewal), so that new
    connections present the new client certificate and trust the new CA; runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        if connect.refresh():
            registry.reconnect()
            tokenizers.reconnect()


@web.middleware
async def _middleware(request: web.Request, handler) -> web.StreamResponse:
    """API keys, errors in OpenAI's format (never a bare 500 page), and the request's metrics, log line and
    trace span (router/request_telemetry.py)."""
    request[STARTED] = started = time.perf_counter()
    ctx = request.app[CONTEXT]
    tel = request[TELEMETRY] = ctx.telemetry.begin(request)
    status = 499  # unless a response is made: the client went away
    try:
        response = await _respond(request, handler, ctx)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        elapsed = time.perf_counter() - started
        ctx.metrics.requests.labels(route, tel.model, str(status)).inc()
        ctx.metrics.request_seconds.labels(route, tel.model).observe(elapsed)
        await ctx.telemetry.end(tel, request, route, status, elapsed)


async def _respond(request: web.Request, handler, ctx: RouterContext) -> web.StreamResponse:
    try:
        if ctx.api_keys.enabled and request.path not in OPEN_PATHS:
            request[KEY_ID] = ctx.api_keys.check(request.headers.get("Authorization"))
        return await handler(request)
    except OpenAIError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return OpenAIError(exc.status, exc.reason, type="invalid_request_error").response()
    except ClientGone:  # before the stream's headers went out: nobody is left to answer
        ctx.metrics.client_disconnects.inc()
        return web.Response(status=499)
    except asyncio.CancelledError:
        ctx.metrics.client_disconnects.inc()
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return OpenAIError(500, "Internal server error.", type="server_error").response()


async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names its request's id, streams included (their headers go out before the end)."""
    tel = request.get(TELEMETRY)
    if tel is not None:
        response.headers["X-Request-Id"] = tel.request_id


async def start(config: RouterConfig, **app_kwargs) -> web.AppRunner:
    """Starts the router on config.host:config.port (0: a free port; see `runner.addresses`), over HTTPS
    with --tls-cert/--tls-key."""
    ssl_context = None
    if config.tls_cert is not None:
        from pagoda.tls import http_server_context

        ssl_context = http_server_context(config.tls_cert, config.tls_key)
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the gRPC call.
    # keepalive_timeout closes idle connections and those slow to send their headers (http_server.py).
    # auto_decompress off: body.py decodes Content-Encoding itself, bounded by the body limit.
    runner = web.AppRunner(
        build_app(config, **app_kwargs),
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=config.idle_timeout_s,
        auto_decompress=False,
    )
    await runner.setup()
    site = CappedSite(
        runner,
        config.host,
        config.port,
        max_connections=connection_cap(config.max_connections),
        backlog=1024,
        ssl_context=ssl_context,
    )
    await site.start()
    return runner


async def serve(config: RouterConfig) -> None:
    runner = await start(config)
    runner.app[CONTEXT].body_pool.warm()
    host, port = runner.addresses[0][:2]
    log.info("router listening on %s://%s:%d", "https" if config.tls_cert else "http", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("router stopping")
    await runner.cleanup()
