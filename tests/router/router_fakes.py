"""Scripted gRPC services for router tests: real grpc.aio servers on loopback that speak the real protos.

The scripted tokenizer maps UTF-8 bytes to ids (byte + 3; 1 = BOS, 2 = EOS) and renders chat as
`<|role|>content\n` lines. The scripted engine answers every prompt with its `reply` text, one byte-token
at a time, then EOS; a seeded request at temperature > 0 gets letters drawn from the seed instead. It
applies max_tokens, stop strings, logprobs, prompt logprobs and usage like the real engine, and can be told
to fail.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import grpc

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

BOS, EOS, OFFSET = 1, 2, 3
VOCAB = 256 + OFFSET


def encode(text: str) -> list[int]:
    return [b + OFFSET for b in text.encode()]


def decode(ids, skip_special_tokens: bool = True) -> str:
    special = {BOS: "<s>", EOS: "</s>"}
    out, buf = [], bytearray()
    for t in ids:
        if t >= OFFSET:
            buf.append(t - OFFSET)
            continue
        out.append(buf.decode(errors="replace"))
        buf = bytearray()
        if not skip_special_tokens:
            out.append(special.get(t, ""))
    out.append(buf.decode(errors="replace"))
    return "".join(out)


def render_chat(chat: tokenizer_pb2.ChatInput) -> str:
    text = "".join(f"<|{m.role}|>{m.content}\n" for m in chat.messages)
    add_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    return text + ("<|assistant|>" if add_prompt and not chat.continue_final_message else "")


class ScriptedTokenizer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(self) -> None:
        self.requests: list[tokenizer_pb2.EncodeRequest] = []
        self.fim: tuple[str, str, str] | None = None  # the FIM tokens Info reports (their texts)

    async def Encode(self, request, context):
        self.requests.append(request)
        if request.WhichOneof("input") == "chat":
            if any(m.role == "tool" for m in request.chat.messages):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the chat template has no tool role")
            text = render_chat(request.chat)
            ids = encode(text)
        else:
            text = request.text
            add = request.add_special_tokens if request.HasField("add_special_tokens") else True
            ids = ([BOS] if add else []) + encode(text)
        return tokenizer_pb2.EncodeResponse(token_ids=ids, num_tokens=len(ids), prompt_text=text)

    async def Decode(self, request, context):
        skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        return tokenizer_pb2.DecodeResponse(text=decode(request.token_ids, skip))

    async def Info(self, request, context):
        fim = (
            tokenizer_pb2.FimTokens(prefix=self.fim[0], suffix=self.fim[1], middle=self.fim[2])
            if self.fim
            else None
        )
        return tokenizer_pb2.InfoResponse(
            vocab_size=VOCAB, bos_token_id=BOS, eos_token_ids=[EOS], model_name="x", fim=fim
        )


@dataclass
class Script:
    """What a scripted engine does; tests change fields between requests."""

    reply: str = "Hello from the scripted engine."
    tokens_per_message: int = 1
    delay_s: float = 0.0  # between messages
    fail_before_first: grpc.StatusCode | None = None
    fail_after_messages: int | None = None  # abort with UNAVAILABLE after this many messages
    fail_only: str | None = None  # with fail_after_messages: only prompts that hold this text fail
    hang: bool = False  # accept the call and never answer
    first_token_delay_s: float = 0.0  # a busy engine: probes answer at once, the first token waits
    probe_error: grpc.StatusCode | None = None  # GetServerInfo answers with this status
    draining: bool = False
    multiplex: bool = True  # serve Multiplex (False: UNIMPLEMENTED, as an engine from before it)
    max_model_len: int = 512
    block_size: int = 4
    model: str = "scripted"


@dataclass
class ScriptedEngine(engine_pb2_grpc.EngineServiceServicer):
    script: Script = field(default_factory=Script)
    requests: list[engine_pb2.GenerateRequest] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: {"Generate": 0, "Multiplex": 0})

    async def GetModelInfo(self, request, context):
        s = self.script
        if s.hang:
            await asyncio.Event().wait()
        return engine_pb2.ModelInfo(
            served_model_name=s.model,
            max_model_len=s.max_model_len,
            block_size=s.block_size,
            vocab_size=VOCAB,
            eos_token_ids=[EOS],
            dtype="float32",
            device="cpu",
            max_num_seqs=256,
        )

    async def GetServerInfo(self, request, context):
        if self.script.hang:
            await asyncio.Event().wait()
        if self.script.probe_error is not None:
            await context.abort(self.script.probe_error, "scripted probe failure")
        return engine_pb2.ServerInfo(num_running=len(self.active), draining=self.script.draining)

    async def Generate(self, request, context):
        s = self.script
        self.requests.append(request)
        if s.hang:
            await asyncio.Event().wait()
        if s.fail_before_first is not None:
            await context.abort(s.fail_before_first, "scripted failure")
        if s.first_token_delay_s:
            await asyncio.sleep(s.first_token_delay_s)
        rid = request.request_id
        self.active.add(rid)
        try:
            async for msg in self._messages(request):
                yield msg
            self.finished.append(rid)
        except asyncio.CancelledError:
            self.cancelled.append(rid)
            raise
        finally:
            self.active.discard(rid)

    async def _messages(self, request):
        s, p = self.script, request.sampling_params
        prompt = list(request.prompt_token_ids.ids)
        n = p.n if p.HasField("n") else 1
        max_tokens = p.max_tokens if p.HasField("max_tokens") else s.max_model_len - len(prompt)
        samples = [self._sample(request, j, max_tokens) for j in range(n)]
        sent = completion = 0
        positions = [0] * n
        fails = s.fail_after_messages is not None and (s.fail_only is None or s.fail_only in decode(prompt))
        while any(pos is not None for pos in positions):
            for j, (ids, reason, text_of) in enumerate(samples):
                pos = positions[j]
                if pos is None:
                    continue
                if fails and sent >= s.fail_after_messages:
                    raise _Abort()
                chunk = ids[pos : pos + s.tokens_per_message]
                positions[j] = pos + len(chunk) if pos + len(chunk) < len(ids) else None
                completion += len(chunk)
                msg = engine_pb2.GenerateResponse(
                    index=j, token_ids=chunk, text=text_of(pos, pos + len(chunk))
                )
                if p.HasField("logprobs"):
                    msg.logprobs.extend(_logprobs(t, p.logprobs) for t in chunk)
                if p.HasField("prompt_logprobs") and j == 0 and pos == 0:  # sample 0's first message
                    msg.prompt_logprobs.extend(_logprobs(t, p.prompt_logprobs, rank=2) for t in prompt[1:])
                if positions[j] is None:
                    msg.finish_reason = reason
                    if all(q is None for q in positions):
                        msg.usage.CopyFrom(
                            engine_pb2.Usage(prompt_tokens=len(prompt), completion_tokens=completion)
                        )
                sent += 1
                yield msg
                if s.delay_s:
                    await asyncio.sleep(s.delay_s)
                while s.hang:  # the engine froze mid-stream
                    await asyncio.sleep(0.05)

    def _sample(self, request, j: int, max_tokens: int):
        """(token ids, finish reason, text_of(start, end)) for sample j."""
        p = request.sampling_params
        if p.HasField("seed") and (not p.HasField("temperature") or p.temperature > 0):
            rng = random.Random(p.seed * 1000 + j)
            text = "".join(rng.choice("abcdefghij ") for _ in range(40))
        else:
            text = self.script.reply
        ids = encode(text) + ([] if p.ignore_eos else [EOS])
        if p.ignore_eos:
            ids = (ids * (max_tokens // max(1, len(ids)) + 1))[:max_tokens]
        reason = engine_pb2.FINISH_REASON_STOP
        if len(ids) > max_tokens:
            ids, reason = ids[:max_tokens], engine_pb2.FINISH_REASON_LENGTH
        full = decode(ids)
        hits = [(full.find(stop), stop) for stop in p.stop if stop in full]
        cut = len(full)
        if hits:  # the earliest stop string ends the sample; its tokens were generated, its text is cut
            at, stop = min(hits)
            ids, reason = ids[: len(encode(full[: at + len(stop)]))], engine_pb2.FINISH_REASON_STOP
            cut = at + len(stop) if p.include_stop_str_in_output else at
        full = full[:cut]

        def text_of(start: int, end: int) -> str:
            before, upto = len(decode(ids[:start])), len(decode(ids[:end]))
            return full[min(before, cut) : min(upto, cut)]

        return ids, reason, text_of


class _Abort(Exception):
    pass


def _logprobs(token: int, k: int, rank: int = 0) -> engine_pb2.PositionLogprobs:
    top = [
        engine_pb2.TokenLogprob(
            token_id=(token + i) % VOCAB,
            logprob=-0.25 * (i + 1),
            token=decode([(token + i) % VOCAB]),
            rank=i + 1,
        )
        for i in range(k)
    ]
    sampled = engine_pb2.TokenLogprob(token_id=token, logprob=-0.25, token=decode([token]), rank=rank)
    return engine_pb2.PositionLogprobs(sampled=sampled, top=top)


async def start_engine(
    script: Script | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[grpc.aio.Server, int, ScriptedEngine]:
    engine = ScriptedEngine(script or Script())
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(_AbortAdapter(engine), server)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, port, engine


async def start_tokenizer() -> tuple[grpc.aio.Server, int, ScriptedTokenizer]:
    tokenizer = ScriptedTokenizer()
    server = grpc.aio.server()
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(tokenizer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, tokenizer


class _AbortAdapter(engine_pb2_grpc.EngineServiceServicer):
    """Turns the script's mid-stream `_Abort` into an UNAVAILABLE status, as a crashing engine gives."""

    def __init__(self, engine: ScriptedEngine):
        self.engine = engine

    async def GetModelInfo(self, request, context):
        return await self.engine.GetModelInfo(request, context)

    async def GetServerInfo(self, request, context):
        return await self.engine.GetServerInfo(request, context)

    async def Generate(self, request, context):
        self.engine.calls["Generate"] += 1
        try:
            async for msg in self.engine.Generate(request, context):
                yield msg
        except _Abort:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted crash")

    async def Multiplex(self, requests, context):
        """Each generation runs the scripted Generate; its messages go out as they come, several a
        response when they pile up, and a failure is its `error_code` (as the real engine's)."""
        self.engine.calls["Multiplex"] += 1
        if not self.engine.script.multiplex:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        out: asyncio.Queue = asyncio.Queue()
        tasks: dict[int, asyncio.Task] = {}

        async def generation(handle: int, request) -> None:
            try:
                async for msg in self.engine.Generate(request, _GenerationContext()):
                    out.put_nowait(engine_pb2.MultiplexedMessage(handle=handle, response=msg))
            except _Status as status:
                out.put_nowait(_error(handle, status.code, status.details))
            except _Abort:
                out.put_nowait(_error(handle, grpc.StatusCode.UNAVAILABLE, "scripted crash"))
            finally:
                tasks.pop(handle, None)
                out.put_nowait(None)  # the writer may be waiting for the last generation to end

        async def read() -> None:
            async for r in requests:
                if r.WhichOneof("action") == "generate":
                    tasks[r.handle] = asyncio.create_task(generation(r.handle, r.generate))
                elif r.handle in tasks:
                    tasks[r.handle].cancel()

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: out.put_nowait(None))
        try:
            while True:  # as the real engine: until the caller closed its side and every generation ended
                batch = [await out.get()]
                while not out.empty():
                    batch.append(out.get_nowait())
                batch = [m for m in batch if m is not None]
                if batch:
                    await context.write(engine_pb2.MultiplexResponse(messages=batch))
                if reader.done() and not tasks and out.empty():
                    return
        finally:
            reader.cancel()
            for task in list(tasks.values()):
                task.cancel()


class _Status(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


class _GenerationContext:
    """What the scripted Generate uses of its call's context, for one generation of a Multiplex call."""

    async def abort(self, code: grpc.StatusCode, details: str):
        raise _Status(code, details)


def _error(handle: int, code: grpc.StatusCode, details: str) -> engine_pb2.MultiplexedMessage:
    return engine_pb2.MultiplexedMessage(handle=handle, error_code=code.value[0], error_message=details)
