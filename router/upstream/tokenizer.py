"""The router's clients of the tokenizer services: chat templates and text to token ids, and back.

Each served model is tokenized by its own tokenizer service (`--tokenizer MODEL=HOST:PORT`), and models
without one by the default (`--tokenizer HOST:PORT`): a Mistral prompt must never be tokenized with
Qwen's vocabulary. Models that name the same address share one client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import grpc

from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from router import request_telemetry
from router.errors import OpenAIError, bad_request, from_grpc
from router.upstream.channels import ChannelFactory


class Tokenizers:
    """The tokenizer client of each model: its own address, else the default; no address at all is a 503
    that names the flag to add."""

    def __init__(
        self,
        default: str | None,
        per_model: Mapping[str, str],
        timeout_s: float,
        connect: ChannelFactory | None = None,
    ):
        self._default = default
        self._per_model = dict(per_model)
        addresses = {*self._per_model.values(), *([default] if default else [])}
        connect = connect or ChannelFactory()
        self._clients = {a: TokenizerClient(a, timeout_s, connect) for a in sorted(addresses)}

    def for_model(self, model: str) -> TokenizerClient:
        address = self._per_model.get(model, self._default)
        if address is None:
            raise OpenAIError(
                503,
                f"The router has no tokenizer for model `{model}`: "
                f"start it with --tokenizer {model}=HOST:PORT.",
                type="server_error",
                code="service_unavailable",
            )
        return self._clients[address]

    def reconnect(self) -> None:
        """New channels for every client (the TLS files changed); calls in flight finish on the old ones."""
        for client in self._clients.values():
            client.reconnect()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()))


class TokenizerClient:
    def __init__(self, target: str, timeout_s: float, connect: ChannelFactory | None = None):
        self._connect = connect or ChannelFactory()
        self._auth = self._connect.metadata
        self._target = target
        self._timeout_s = timeout_s
        self._info: tokenizer_pb2.InfoResponse | None = None
        self._channel, self._stub = self._open()
        self._closing: set[asyncio.Task] = set()

    def _open(self) -> tuple[grpc.aio.Channel, tokenizer_pb2_grpc.TokenizerServiceStub]:
        # A DNS name with several tokenizer pods behind it is spread over with round-robin.
        channel = self._connect(self._target, [("grpc.lb_policy_name", "round_robin")])
        return channel, tokenizer_pb2_grpc.TokenizerServiceStub(channel)

    def reconnect(self) -> None:
        old = self._channel
        self._channel, self._stub = self._open()
        task = asyncio.create_task(old.close(grace=self._timeout_s))  # calls in flight may finish
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in self._closing:
            task.cancel()
        await asyncio.gather(self._channel.close(grace=None), *self._closing, return_exceptions=True)

    async def encode_chat(
        self,
        messages: Sequence[tokenizer_pb2.ChatMessage],
        *,
        add_generation_prompt: bool,
        continue_final_message: bool,
        chat_template_kwargs_json: str = "",
        chat_template: str = "",
        tools_json: str = "",
        max_tokens: int | None = None,
        return_token_strs: bool = False,
    ) -> tokenizer_pb2.EncodeResponse:
        """`max_tokens`: a longer prompt is a 400 (context_length_exceeded), refused by the tokenizer
        before it is tokenized where its length in bytes already tells."""
        chat = tokenizer_pb2.ChatInput(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template_kwargs_json=chat_template_kwargs_json,
            chat_template=chat_template,
            tools_json=tools_json,
        )
        request = tokenizer_pb2.EncodeRequest(
            chat=chat, max_tokens=max_tokens, return_token_strs=return_token_strs
        )
        return await self._call("Encode", request, param="messages")

    async def encode_text(
        self,
        text: str,
        add_special_tokens: bool | None = None,
        max_tokens: int | None = None,
        return_token_strs: bool = False,
    ) -> tokenizer_pb2.EncodeResponse:
        request = tokenizer_pb2.EncodeRequest(
            text=text, max_tokens=max_tokens, return_token_strs=return_token_strs
        )
        if add_special_tokens is not None:
            request.add_special_tokens = add_special_tokens
        return await self._call("Encode", request, param="prompt")

    async def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        request = tokenizer_pb2.DecodeRequest(token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return (await self._call("Decode", request)).text

    async def info(self) -> tokenizer_pb2.InfoResponse:
        """The tokenizer's facts (vocabulary, special and FIM tokens), asked once: they never change."""
        if self._info is None:
            self._info = await self._call("Info", tokenizer_pb2.InfoRequest())
        return self._info

    async def _call(self, method: str, request, param: str | None = None):
        """Calls `method` with the request's id and trace context; its errors become OpenAIErrors."""
        metadata, span = request_telemetry.outgoing(f"TokenizerService/{method}", self._target)
        error = None
        try:
            return await getattr(self._stub, method)(
                request, timeout=self._timeout_s, metadata=(*metadata, *self._auth)
            )
        except grpc.aio.AioRpcError as err:
            error = f"{err.code().name}: {err.details()}"
            raise _client_error(err, param) from None
        finally:
            if span is not None:
                span.end(error)


# The tokenizer's messages start with the request field at fault: the body field it came from.
_PARAMS = {
    "chat.chat_template": "chat_template",
    "chat.chat_template_kwargs_json": "chat_template_kwargs",
    "chat.messages": "messages",
    "text": "prompt",
}


def _client_error(err: grpc.aio.AioRpcError, param: str | None) -> OpenAIError:
    if err.code() is grpc.StatusCode.OUT_OF_RANGE:  # the prompt cannot fit: no retry will help
        return bad_request(
            f"The prompt is too long for this model: {err.details()}.", param, code="context_length_exceeded"
        )
    error = from_grpc(err, "tokenizer")
    if err.code() is grpc.StatusCode.INVALID_ARGUMENT:
        field = (err.details() or "").split(":", 1)[0]
        error.param = _PARAMS.get(field, error.param)
    return error
