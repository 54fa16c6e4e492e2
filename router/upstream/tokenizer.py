"""The router's client of the tokenizer service: chat templates and text to token ids, and back."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from router import request_telemetry
from router.errors import from_grpc
from router.upstream.channels import ChannelFactory


class TokenizerClient:
    def __init__(self, target: str, timeout_s: float, connect: ChannelFactory | None = None):
        # A DNS name with several tokenizer pods behind it is spread over with round-robin.
        self._channel = (connect or ChannelFactory())(target, [("grpc.lb_policy_name", "round_robin")])
        self._stub = tokenizer_pb2_grpc.TokenizerServiceStub(self._channel)
        self._target = target
        self._timeout_s = timeout_s
        self._info: tokenizer_pb2.InfoResponse | None = None

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def encode_chat(
        self,
        messages: Sequence[tokenizer_pb2.ChatMessage],
        *,
        add_generation_prompt: bool,
        continue_final_message: bool,
        chat_template_kwargs_json: str = "",
        chat_template: str = "",
    ) -> tokenizer_pb2.EncodeResponse:
        chat = tokenizer_pb2.ChatInput(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template_kwargs_json=chat_template_kwargs_json,
            chat_template=chat_template,
        )
        return await self._call("Encode", tokenizer_pb2.EncodeRequest(chat=chat))

    async def encode_text(
        self, text: str, add_special_tokens: bool | None = None
    ) -> tokenizer_pb2.EncodeResponse:
        request = tokenizer_pb2.EncodeRequest(text=text)
        if add_special_tokens is not None:
            request.add_special_tokens = add_special_tokens
        return await self._call("Encode", request)

    async def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        request = tokenizer_pb2.DecodeRequest(token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return (await self._call("Decode", request)).text

    async def info(self) -> tokenizer_pb2.InfoResponse:
        """The tokenizer's facts (vocabulary, special and FIM tokens), asked once: they never change."""
        if self._info is None:
            self._info = await self._call("Info", tokenizer_pb2.InfoRequest())
        return self._info

    async def _call(self, method: str, request):
        """Calls `method` with the request's id and trace context; its errors become OpenAIErrors."""
        metadata, span = request_telemetry.outgoing(f"TokenizerService/{method}", self._target)
        error = None
        try:
            return await getattr(self._stub, method)(request, timeout=self._timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            error = f"{err.code().name}: {err.details()}"
            raise from_grpc(err, "tokenizer") from None
        finally:
            if span is not None:
                span.end(error)
