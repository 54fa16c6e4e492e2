"""Rendering chat templates that come with a request, in worker processes with hard limits.

A Jinja template is a program. The sandbox (transformers renders in jinja2's ImmutableSandboxedEnvironment)
stops it from touching the process, but not from using it up: `{{ 'a' * 10**10 }}` takes all memory,
`{{ (7 ** 30000000) % 10 }}` one C call of 24 s, nested loops as long as they like. In a thread of the
service that stalls every call (the GIL) and outlives SIGTERM. So a request's template renders in a
worker process of its own:

    memory   RLIMIT_AS: the worker's address space after start-up plus `memory_bytes`; past it, the render
             fails with MemoryError (an INVALID_ARGUMENT for the request), the worker lives on
    time     `timeout_s` of wall time, measured here: past it the worker is killed and another started
    output   at most `max_output_bytes` of rendered text

Workers start once (about 0.8 s: they import transformers' template renderer, not the tokenizer) and
take one render at a time over a pipe; a render costs a pickle of the messages each way and a wake-up:
SmolLM2's own template on a two-message chat took 2.3 ms through a worker against 1.4 ms in-process
(median Encode, a loaded 2-core machine). A request that finds every worker busy waits for one up to
`timeout_s`, then is refused. The model's own template never comes here: it is part of the
model folder, trusted like the weights, and renders in-process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection

from pagoda.parent_death import die_with_parent
from tokenizer_service import tools as tools_mod
from tokenizer_service.tokenizer import ChatRequest, InvalidInput

log = logging.getLogger(__name__)
_FIELD = "chat.chat_template"


@dataclass(frozen=True)
class SandboxLimits:
    workers: int = 2
    timeout_s: float = 2.0
    memory_bytes: int = 256 * 2**20
    max_output_bytes: int = 8 * 2**20


class TemplateSandbox:
    def __init__(self, limits: SandboxLimits, special_tokens: dict):
        self.limits = limits
        self._special_tokens = special_tokens
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._busy: set[_Worker] = set()  # rendering now: close() kills them too, mid-render
        self._closed = False

    async def start(self) -> None:
        workers = await asyncio.gather(
            *(asyncio.to_thread(_Worker.spawn, self.limits) for _ in range(self.limits.workers))
        )
        for worker in workers:
            self._idle.put_nowait(worker)

    async def render(self, chat: ChatRequest) -> str:
        """The rendered prompt, or InvalidInput naming chat.chat_template (error, timeout, limits)."""
        limits = self.limits
        try:
            worker = await asyncio.wait_for(self._idle.get(), limits.timeout_s)
        except TimeoutError:
            raise InvalidInput(
                _FIELD,
                f"every template worker is busy; try again (each render may take {limits.timeout_s:g} s)",
            ) from None
        # Tools, and tool calls in the history, as the model's own template gets them (tokenizer.render_chat).
        messages, tools = tools_mod.with_fallbacks(chat.messages, chat.tools, chat.chat_template)
        tool_kwargs = {"tools": tools} if tools is not None else {}
        job = (
            chat.chat_template,
            messages,
            chat.add_generation_prompt,
            chat.continue_final_message,
            {**self._special_tokens, **chat.template_kwargs, **tool_kwargs},
        )
        self._busy.add(worker)
        try:
            ok, value = await worker.call(job, limits.timeout_s)
        except TimeoutError:
            worker.kill()
            self._replace()
            raise InvalidInput(
                _FIELD, f"the template took longer than {limits.timeout_s:g} s to render"
            ) from None
        except (EOFError, OSError):  # the worker died mid-render (its memory limit, or killed)
            worker.kill()
            self._replace()
            raise InvalidInput(_FIELD, "the template's render failed (the worker process died)") from None
        finally:
            self._busy.discard(worker)
        self._idle.put_nowait(worker)
        if not ok:
            raise InvalidInput(_FIELD, f"the template failed to render: {value}")
        return value

    def _replace(self) -> None:
        if self._closed:  # stopping: no new worker
            return

        async def respawn() -> None:
            worker = await asyncio.to_thread(_Worker.spawn, self.limits)
            if self._closed:
                worker.kill()
            else:
                self._idle.put_nowait(worker)

        asyncio.get_running_loop().create_task(respawn())

    def close(self) -> None:
        """Kills every worker, a stuck render's too: the service does not wait on a template (nor count on
        the parent-death signal alone, which a loaded machine delivers late)."""
        self._closed = True
        while not self._idle.empty():
            self._idle.get_nowait().kill()
        for worker in list(self._busy):
            worker.kill()


class _Worker:
    def __init__(self, process, conn: Connection):
        self.process = process
        self.conn = conn

    @classmethod
    def spawn(cls, limits: SandboxLimits) -> _Worker:
        # spawn, not fork: a fork of the service would inherit its gRPC threads' locks.
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=_serve,
            args=(theirs, limits.memory_bytes, limits.max_output_bytes, os.getpid()),
            daemon=True,
        )
        process.start()
        theirs.close()
        if ours.recv() != "ready":  # imported and limited
            raise RuntimeError("a template worker failed to start")
        return cls(process, ours)

    async def call(self, job: tuple, timeout_s: float) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.conn.send, job)  # messages may be megabytes: not on the event loop
        readable = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            async with asyncio.timeout(timeout_s):
                await readable
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(1)
        self.conn.close()


# ---- in the worker process --------------------------------------------------------------------------


def _serve(conn: Connection, memory_bytes: int, max_output_bytes: int, parent_pid: int) -> None:
    # Killed with the service, even mid-render (a SIGKILLed service closes no pipe in time).
    die_with_parent(parent_pid=parent_pid)
    from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

    _limit_memory(memory_bytes)
    conn.send("ready")
    while True:
        try:
            template, messages, add_generation_prompt, continue_final, kwargs = conn.recv()
        except EOFError:  # the service closed the pipe: it is stopping
            return
        try:
            rendered, _ = render_jinja_template(
                conversations=[_normalize_chat_messages(messages)],
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final,
                **kwargs,
            )
            text = rendered[0]
            if len(text) > max_output_bytes or len(text.encode("utf-8", "surrogatepass")) > max_output_bytes:
                reply = (False, f"the rendered prompt is larger than {max_output_bytes} bytes")
            else:
                reply = (True, text)
        except MemoryError:
            reply = (False, f"the template used more than {memory_bytes >> 20} MiB of memory")
        except RecursionError:
            reply = (False, "the template recursed too deeply")
        except Exception as e:  # noqa: BLE001 (any error of the template is the request's fault)
            reply = (False, f"{type(e).__name__}: {e}"[:1000])
        conn.send(reply)


def _limit_memory(extra_bytes: int) -> None:
    """RLIMIT_AS: what the worker has mapped now (the interpreter and its imports) plus `extra_bytes`."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
