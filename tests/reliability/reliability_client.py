"""An HTTP client that judges every response it gets, for counting.

Each request ends as one `Outcome`:

    ok      200 and a complete answer: every choice finished, then `data: [DONE]` when streaming
    error   a proper error: a 4xx/503 with an OpenAI error body (a 429 also with Retry-After), or a stream
            that ends with an OpenAI error event and then `[DONE]`
    hung    no end within the client's deadline
    lost    anything else: a 500, a body that is not OpenAI's error format, a connection dropped or a
            stream cut short without an error event, JSON that does not parse

A client that leaves on purpose (`leave_after`) ends as `left`, which is none of the above.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

KINDS = ("ok", "error", "hung", "lost")


@dataclass
class Outcome:
    kind: str  # ok | error | hung | lost | left
    status: int | None = None
    detail: str = ""
    chunks: int = 0  # content chunks received before the end
    seconds: float = 0.0


def is_openai_error(body: object) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
    )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict | bytes,
    *,
    timeout_s: float = 60,
    headers: dict | None = None,
    leave_after: int | None = None,
    ssl=None,
) -> Outcome:
    """POSTs `body` (a dict is sent as JSON) and judges the answer; with `leave_after` k, closes the
    connection after k streamed events (0: before reading the response). `ssl`: an SSLContext for HTTPS."""
    started = time.monotonic()
    outcome = Outcome("lost")
    try:
        async with asyncio.timeout(timeout_s):
            outcome = await _exchange(session, url, body, headers, leave_after, ssl)
    except TimeoutError:
        outcome = Outcome("hung", detail=f"no end after {timeout_s:g} s")
    except (aiohttp.ClientError, ConnectionError) as err:
        outcome = Outcome("lost", detail=f"{type(err).__name__}: {err}")
    outcome.seconds = time.monotonic() - started
    return outcome


async def _exchange(session, url, body, headers, leave_after, ssl) -> Outcome:
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    if ssl is not None:
        kwargs["ssl"] = ssl
    async with session.post(url, headers=headers, **kwargs) as r:
        if leave_after == 0:
            r.close()
            return Outcome("left", r.status)
        if r.status != 200:
            return _judge_error(r.status, await r.read(), r.headers)
        if r.content_type == "text/event-stream":
            return await _judge_stream(r, leave_after)
        return _judge_json(await r.read())


def _judge_error(status: int, raw: bytes, headers) -> Outcome:
    try:
        body = json.loads(raw)
    except ValueError:
        return Outcome("lost", status, f"non-JSON error body: {raw[:120]!r}")
    if status >= 500 and status != 503:
        return Outcome("lost", status, f"server error: {raw[:200]!r}")
    if not is_openai_error(body):
        return Outcome("lost", status, f"not an OpenAI error body: {raw[:200]!r}")
    if status == 429 and "Retry-After" not in headers:
        return Outcome("lost", status, "a 429 without Retry-After")
    return Outcome("error", status, body["error"]["message"][:120])


def _judge_json(raw: bytes) -> Outcome:
    try:
        body = json.loads(raw)
    except ValueError:
        return Outcome("lost", 200, f"non-JSON body: {raw[:120]!r}")
    choices = body.get("choices") or []
    if not choices or any(c.get("finish_reason") is None for c in choices):
        return Outcome("lost", 200, f"unfinished answer: {raw[:200]!r}")
    return Outcome("ok", 200, chunks=len(choices))


class StreamJudge:
    """Judges a stream line by line: `feed` returns the outcome once the stream has decided it."""

    def __init__(self, leave_after: int | None = None, on_event=None):
        self.leave_after = leave_after
        self.on_event = on_event  # called with each event's JSON (schema checks)
        self.open_choices: set[int] = set()
        self.finished: set[int] = set()
        self.events = self.chunks = 0
        self.error: dict | None = None

    def feed(self, line: bytes) -> Outcome | None:
        if not line.startswith(b"data: "):
            return None
        data = line[6:].strip()
        if data == b"[DONE]":
            if self.error is not None:
                return Outcome("error", 200, self.error["message"][:120], self.chunks)
            if not self.open_choices or self.open_choices - self.finished:
                detail = f"[DONE] before every choice finished ({self.finished} of {self.open_choices})"
                return Outcome("lost", 200, detail, self.chunks)
            return Outcome("ok", 200, chunks=self.chunks)
        try:
            event = json.loads(data)
        except ValueError:
            return Outcome("lost", 200, f"an event that is not JSON: {data[:120]!r}", self.chunks)
        if is_openai_error(event):
            self.error = event["error"]
            return None
        if self.on_event is not None:
            problem = self.on_event(event)
            if problem:
                return Outcome("lost", 200, problem, self.chunks)
        for choice in event.get("choices", []):
            self.open_choices.add(choice["index"])
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                self.chunks += 1
            if choice.get("finish_reason") is not None:
                self.finished.add(choice["index"])
        self.events += 1
        if self.leave_after is not None and self.events >= self.leave_after:
            return Outcome("left", 200, chunks=self.chunks)
        return None

    def end(self) -> Outcome:
        return Outcome("lost", 200, "the stream ended without [DONE]", self.chunks)


async def _judge_stream(r: aiohttp.ClientResponse, leave_after: int | None) -> Outcome:
    judge = StreamJudge(leave_after)
    async for line in r.content:
        outcome = judge.feed(line)
        if outcome is not None:
            if outcome.kind == "left":
                r.close()
            return outcome
    return judge.end()


def judge(
    status: int, content_type: str, raw: bytes, headers, on_event=None, choices: bool = True
) -> Outcome:
    """The same judgement for a response read whole (a blocking client); `choices`: a completion, whose
    every choice must have finished (other routes' answers are only checked to be JSON)."""
    if status != 200:
        return _judge_error(status, raw, headers)
    if not choices:
        try:
            json.loads(raw)
        except ValueError:
            return Outcome("lost", 200, f"non-JSON body: {raw[:120]!r}")
        return Outcome("ok", 200)
    if content_type.startswith("text/event-stream"):
        stream = StreamJudge(on_event=on_event)
        for line in raw.splitlines(keepends=True):
            outcome = stream.feed(line)
            if outcome is not None:
                return outcome
        return stream.end()
    return _judge_json(raw)


def judge_response_events(status: int, content_type: str, raw: bytes, headers) -> Outcome:
    """A Responses answer: an error, a JSON response object, or an event stream whose every event is JSON
    and whose last is response.completed (or an error event)."""
    if status != 200 or not content_type.startswith("text/event-stream"):
        return judge(status, content_type, raw, headers, choices=False)
    try:
        events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]
    except ValueError:
        return Outcome("lost", 200, f"an event that is not JSON: {raw[:120]!r}")
    last = events[-1].get("type") if events else None
    if last not in ("response.completed", "error"):
        return Outcome("lost", 200, f"the stream ended with {last!r}")
    return Outcome("ok", 200)


@dataclass
class Tally:
    """Outcomes of one scenario, counted; `figures` holds the scenario's measurements for the record."""

    scenario: str
    outcomes: list[Outcome] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def extend(self, outcomes) -> None:
        self.outcomes.extend(outcomes)

    @property
    def counts(self) -> Counter:
        return Counter(o.kind for o in self.outcomes)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def of(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def details(self, kind: str, n: int = 5) -> list[str]:
        """The most common details of one kind (for assertion messages)."""
        return [
            f"{count}x {status} {detail}"
            for (status, detail), count in Counter((o.status, o.detail) for o in self.of(kind)).most_common(n)
        ]

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.scenario}: sent {self.sent}, ok {c['ok']}, proper errors {c['error']}, "
            f"hung {c['hung']}, lost {c['lost']}" + (f", left on purpose {c['left']}" if c["left"] else "")
        )

    def assert_none_hung_or_lost(self) -> None:
        assert not self.of("hung") and not self.of("lost"), (
            f"{self.summary()}\nhung: {self.details('hung')}\nlost: {self.details('lost')}"
        )


async def seconds_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Polls a blocking `predicate` (off the event loop, so streams keep flowing) until it holds;
    returns how long that took."""
    started = time.monotonic()
    while True:
        try:
            if await asyncio.to_thread(predicate):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 (a service being restarted may refuse the question)
            pass
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


def engine_picks(router) -> dict[str, float]:
    pattern = r'^pagoda_router_engine_picks_total\{engine="([^"]+)"[^}]*\} ([0-9.e+]+)$'
    return {address: float(n) for address, n in re.findall(pattern, router.metrics(), re.M)}


async def open_every_multiplex_call(stack, router, url: str, body) -> None:
    """A router keeps one Multiplex call open to each engine that is up (a reader task and gRPC's own
    for it), opened by the first request there; an engine restarted by an earlier test has none yet.
    Requests (`body(i)`: a short one) until every engine served one, so that a count of the router's
    tasks compares only what requests leave behind."""
    before = engine_picks(router)
    async with aiohttp.ClientSession() as s:
        for i in range(64):
            now = engine_picks(router)
            if sum(n > before.get(address, 0.0) for address, n in now.items()) >= stack.num_engines:
                return
            await post(s, url, body(10_000 + i))
    raise AssertionError(f"requests reached only some engines: {engine_picks(router)}")
