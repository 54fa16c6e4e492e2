"""The EngineService RPCs: thin, over AsyncEngine. Errors map to statuses in errors.grpc_errors."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from engine_service.engine.async_engine import AsyncEngine
from engine_service.server import convert
from engine_service.server.errors import grpc_errors
from engine_service.server.multiplex import MultiplexCall
from engine_service.server.request_telemetry import RequestTelemetry
from engine_service.server.serving_state import ServingState
from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.engine.v1 import engine_pb2_grpc
from pagoda.grpc_auth import caller_identity
from pagoda.prompt_bound import refuses


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, state: ServingState, telemetry: RequestTelemetry | None = None):
        self.state = state
        self.telemetry = telemetry or RequestTelemetry(tracing=None, log_requests=False, model_name="")

    @grpc_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        request_id = request.request_id or uuid.uuid4().hex
        with self.telemetry.generate(request_id, context.invocation_metadata()) as call:
            engine = self.state.accepting()
            convert.check_generates(engine.model_info)
            convert.check_request_id(request_id)
            params = convert.sampling_params_from_pb(request.sampling_params)
            prompt = await self._prompt(request, engine, self.state.bytes_per_token)
            stream = call.stream = engine.add_request(
                request_id, prompt, params, request.cache_salt or None, owner=caller_identity(context)
            )
            done = False  # the request's last message (with usage) was sent
            try:
                while not done:
                    for delta in await stream.get():
                        await context.write(convert.delta_to_pb(delta, self.state.token_texts))
                        done = delta.usage is not None
            finally:
                if not done:  # cancelled by the client, or the write failed
                    engine.abort(request_id)

    @grpc_errors
    async def Multiplex(self, requests, context: grpc.aio.ServicerContext) -> None:
        """Generations over one stream (multiplex.py): a router's way in."""

        # The prompt as Generate reads it, text that cannot fit refused from its length (bytes_per_token).
        def prompt_of(request: pb.GenerateRequest, engine: AsyncEngine):
            return self._prompt(request, engine, self.state.bytes_per_token)

        await MultiplexCall(self.state, self.telemetry, prompt_of).serve(requests, context)

    @grpc_errors
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        engine = self.state.accepting()
        info = engine.model_info
        if info.task != "embed":
            raise ValueError("this engine serves a generative model: Embed needs an embedding model")
        request_id = request.request_id or uuid.uuid4().hex
        convert.check_request_id(request_id)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        convert.check_embed_request(request, info, dimensions)
        prompts = [await self._embed_input(x, engine, i) for i, x in enumerate(request.inputs)]
        futures = engine.embed(request_id, prompts, request.cache_salt or None)
        try:
            vectors = await asyncio.gather(*futures)
        finally:
            engine.abort_embeds(request_id, len(prompts))  # those still running, if the call was cancelled
        return convert.embed_response(vectors, prompts, dimensions)

    @staticmethod
    async def _embed_input(x: pb.EmbedInput, engine: AsyncEngine, i: int) -> list[int]:
        which = x.WhichOneof("input")
        if which == "token_ids":
            return list(x.token_ids.ids)
        if which is None:
            raise ValueError(f"inputs[{i}] is empty: set token_ids or text")
        if engine.tokenizer is None:
            raise ValueError(
                "text needs the model's tokenizer, and the model folder has none: send token_ids"
            )
        return await asyncio.to_thread(engine.tokenizer.encode, x.text)

    @grpc_errors
    async def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        """Only the caller's own requests: another caller's request id reads as unknown (found=false)."""
        engine = self.state.ready()
        return pb.AbortResponse(found=engine.abort(request.request_id, owner=caller_identity(context)))

    @grpc_errors
    async def GetModelInfo(self, request, context) -> pb.ModelInfo:
        return convert.model_info_to_pb(self.state.ready().model_info)

    @grpc_errors
    async def GetServerInfo(self, request, context) -> pb.ServerInfo:
        return self._server_info()

    @grpc_errors
    async def WatchServerInfo(self, request: pb.WatchServerInfoRequest, context) -> None:
        interval_s = (request.interval_ms or 1000) / 1000
        if interval_s < 0.05:
            raise ValueError(f"interval_ms must be at least 50, got {request.interval_ms}")
        while True:
            await context.write(self._server_info())
            await asyncio.sleep(interval_s)

    @grpc_errors
    async def SubscribeKvEvents(self, request: pb.SubscribeKvEventsRequest, context) -> None:
        engine = self.state.ready()
        hub = engine.kv_events
        subscription = hub.subscribe()
        try:
            while True:
                item = await subscription.next()
                for message in convert.kv_events_to_pb(item, hub.block_size, request.include_token_ids):
                    await context.write(message)
        finally:
            subscription.close()

    def _server_info(self) -> pb.ServerInfo:
        engine = self.state.ready()
        return convert.server_info_to_pb(engine.stats, engine.meter.rate(), self.state.draining)

    @staticmethod
    async def _prompt(
        request: pb.GenerateRequest, engine: AsyncEngine, bytes_per_token: int | None
    ) -> list[int]:
        which = request.WhichOneof("prompt")
        if which == "prompt_token_ids":
            return list(request.prompt_token_ids.ids)
        if which is None:
            raise ValueError("prompt is required: set prompt_token_ids or text")
        if engine.tokenizer is None:
            raise ValueError(
                "text needs the model's tokenizer, and the model folder has none: send prompt_token_ids"
            )
        max_model_len = engine.model_info.max_model_len
        if refuses(request.text, max_model_len - 1, bytes_per_token):  # never tokenize what cannot fit
            raise ValueError(
                f"text is longer than this model's context of {max_model_len} tokens (judged from its "
                f"{len(request.text)} characters, at most {bytes_per_token} bytes a token)"
            )
        # Off the event loop: a long text takes milliseconds to encode.
        return await asyncio.to_thread(engine.tokenizer.encode, request.text)
