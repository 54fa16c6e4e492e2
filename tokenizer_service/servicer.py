"""The TokenizerService RPCs: protobuf in, a pool job, protobuf out.

Errors map to status codes in one place (`_rpc`): bad input is INVALID_ARGUMENT naming the
field, chat for a model without a chat template is FAILED_PRECONDITION, calls before the
tokenizer has loaded are UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

import grpc

from pagoda.tokenizer.v1 import tokenizer_pb2 as pb
from pagoda.tokenizer.v1 import tokenizer_pb2_grpc
from tokenizer_service.metrics import TokenizerMetrics
from tokenizer_service.pool import TokenizerPool
from tokenizer_service.rpc_telemetry import RpcTelemetry
from tokenizer_service.template_sandbox import TemplateSandbox
from tokenizer_service.tokenizer import ChatRequest, InvalidInput, NoChatTemplate, TokenizerInfo, TooLong
from tokenizer_service.tools import MAX_TOOL_CALLS, ToolsError, parse_tools, tool_call_for_template

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    pass


def _rpc(method):
    """Times, counts, logs and traces the call, and turns exceptions into gRPC status codes."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: TokenizerServicer, request, context: grpc.aio.ServicerContext):
        call = self.telemetry.begin(name, context.invocation_metadata())
        started = self.metrics.started(name)
        code, message, response = grpc.StatusCode.OK, "", None
        try:
            response = await method(self, request)
            return response
        except TooLong as e:
            code, message = grpc.StatusCode.OUT_OF_RANGE, str(e)
        except InvalidInput as e:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except NoChatTemplate as e:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(e)
        except NotReady as e:
            code, message = grpc.StatusCode.UNAVAILABLE, str(e)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            log.exception("%s failed", name)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"
        finally:
            self.metrics.finished(name, code, started)
            call.end(code, message, getattr(response, "num_tokens", None))
        await context.abort(code, message)

    return handler


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(
        self,
        metrics: TokenizerMetrics,
        telemetry: RpcTelemetry | None = None,
        max_input_tokens: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.telemetry = telemetry or RpcTelemetry()
        self._pool: TokenizerPool | None = None
        self._info: pb.InfoResponse | None = None
        self._max_input_tokens = max_input_tokens  # the ceiling of every Encode (None: none)
        self._sandbox: TemplateSandbox | None = None  # None: request templates are refused

    def set_ready(
        self,
        pool: TokenizerPool,
        info: TokenizerInfo,
        max_input_tokens: int | None = None,
        sandbox: TemplateSandbox | None = None,
    ) -> None:
        self._pool, self._info = pool, info_to_pb(info)
        if self._max_input_tokens is None:
            self._max_input_tokens = max_input_tokens
        self._sandbox = sandbox

    @property
    def pool(self) -> TokenizerPool:
        if self._pool is None:
            raise NotReady("the tokenizer is still loading")
        return self._pool

    @_rpc
    async def Encode(self, request: pb.EncodeRequest) -> pb.EncodeResponse:
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidInput("input", "set text or chat")
        # Defaults: special tokens for plain text, none for chat (the template writes them).
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else kind == "text"
        limit = self._limit(request)
        if kind == "text":
            text = request.text
            encoded = await self.pool.run(lambda t: t.encode_text(text, add_special, limit))
        elif request.chat.chat_template:
            encoded = await self._encode_with_request_template(chat_from_pb(request.chat), add_special, limit)
        else:
            chat = chat_from_pb(request.chat)
            encoded = await self.pool.run(lambda t: t.encode_chat(chat, add_special, limit))
        self.metrics.tokens_encoded.labels(kind).inc(len(encoded.token_ids))
        token_strs = None
        if request.return_token_strs:
            ids = list(encoded.token_ids)
            token_strs = await self.pool.run(lambda t: t.hf.convert_ids_to_tokens(ids))
        return pb.EncodeResponse(
            token_ids=encoded.token_ids,
            num_tokens=len(encoded.token_ids),
            prompt_text=encoded.prompt_text,
            token_strs=token_strs,
        )

    def _limit(self, request: pb.EncodeRequest) -> int | None:
        """The most tokens this Encode may produce: the caller's max_tokens within the service's ceiling."""
        asked = request.max_tokens if request.HasField("max_tokens") else None
        limits = [n for n in (asked, self._max_input_tokens) if n is not None]
        return min(limits) if limits else None

    async def _encode_with_request_template(self, chat: ChatRequest, add_special: bool, limit: int | None):
        if self._sandbox is None:
            raise InvalidInput(
                "chat.chat_template",
                "request templates are not accepted by this service (the operator may allow them with "
                "--trust-request-chat-template)",
            )
        self.pool.first.check_chat(chat)
        prompt = await self._sandbox.render(chat)
        return await self.pool.run(lambda t: t.encode_rendered(prompt, add_special, limit))

    @_rpc
    async def Decode(self, request: pb.DecodeRequest) -> pb.DecodeResponse:
        ids = list(request.token_ids)
        if self._max_input_tokens is not None and len(ids) > self._max_input_tokens:
            raise TooLong("token_ids", self._max_input_tokens, len(ids))
        skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        return pb.DecodeResponse(text=await self.pool.run(lambda t: t.decode(ids, skip)))

    @_rpc
    async def Info(self, request: pb.InfoRequest) -> pb.InfoResponse:
        if self._info is None:
            raise NotReady("the tokenizer is still loading")
        return self._info


def chat_from_pb(chat: pb.ChatInput) -> ChatRequest:
    if not chat.messages:
        raise InvalidInput("chat.messages", "must not be empty")
    messages = []
    for i, m in enumerate(chat.messages):
        if not m.role:
            raise InvalidInput(f"chat.messages[{i}].role", "must not be empty")
        message = {"role": m.role, "content": m.content}
        if m.HasField("name"):
            message["name"] = m.name
        if m.HasField("tool_call_id"):
            message["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            if len(m.tool_calls) > MAX_TOOL_CALLS:
                raise InvalidInput(
                    f"chat.messages[{i}].tool_calls", f"may hold at most {MAX_TOOL_CALLS} calls"
                )
            message["tool_calls"] = [tool_call_for_template(c.id, c.name, c.arguments) for c in m.tool_calls]
            if not m.content:
                message["content"] = None  # as OpenAI sends it, and templates test for
        messages.append(message)
    if chat.continue_final_message and chat.add_generation_prompt:
        raise InvalidInput(
            "chat.add_generation_prompt", "cannot be true together with continue_final_message"
        )
    add_generation_prompt = (
        chat.add_generation_prompt
        if chat.HasField("add_generation_prompt")
        else not chat.continue_final_message
    )
    return ChatRequest(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=chat.continue_final_message,
        template_kwargs=_template_kwargs(chat.chat_template_kwargs_json),
        chat_template=chat.chat_template or None,
        tools=_tools(chat.tools_json),
    )


def _tools(text: str) -> list | None:
    try:
        return parse_tools(text)
    except ToolsError as e:
        raise InvalidInput(e.field, str(e)) from e


def _template_kwargs(text: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput("chat.chat_template_kwargs_json", f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidInput(
            "chat.chat_template_kwargs_json", f"must be a JSON object, got {type(value).__name__}"
        )
    return value


def info_to_pb(info: TokenizerInfo) -> pb.InfoResponse:
    return pb.InfoResponse(
        vocab_size=info.vocab_size,
        bos_token_id=info.bos_token_id,
        eos_token_ids=info.eos_token_ids,
        special_tokens=info.special_tokens,
        has_chat_template=info.has_chat_template,
        model_max_length=info.model_max_length,
        model_name=info.model_name,
        chat_template=info.chat_template,
        fim=pb.FimTokens(prefix=info.fim_tokens[0], suffix=info.fim_tokens[1], middle=info.fim_tokens[2])
        if info.fim_tokens
        else None,
    )
