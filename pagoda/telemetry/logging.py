"""Logs of every service: one `--log-format` (text | json), and request ids that follow a request across them.

    text  2026-11-27 08:18:26,123 INFO router.requests: POST /v1/chat/completions request_id=7f3a status=200
    json  {"time": "2026-11-27T08:18:26.123Z", "level": "INFO", "service": "router",
           "logger": "router.requests", "message": "POST /v1/chat/completions", "request_id": "7f3a",
           "status": 200, ...}

A request's id (the `x-request-id` HTTP header or gRPC metadata, or one made by the first service it reaches)
sits in a context variable while the request is handled (`request_context`), so every line logged on its
behalf carries it, whichever module logs; a trace id joins it when tracing is on. Structured fields go in
`extra=fields(...)`: JSON gets them as keys, text appends them as key=value.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

# The HTTP header and gRPC metadata key that carries a request's id from service to service.
REQUEST_ID_KEY = "x-request-id"

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("pagoda_request_id", default=None)
_TRACE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("pagoda_trace_id", default=None)
# What a request id may look like when it comes from outside: ids go into logs and headers verbatim.
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def valid_request_id(value: str | None) -> str | None:
    """`value` if it is a usable request id (1-128 characters of [A-Za-z0-9._:/+=@-]), else None."""
    return value if value and _VALID_ID.fullmatch(value) else None


def request_id_from_metadata(metadata: Iterable | None) -> str | None:
    """The caller's request id from gRPC invocation metadata ((key, value) pairs), if valid."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return valid_request_id(value if isinstance(value, str) else None)
    return None


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def set_request_context(request_id: str | None, trace_id: str | None = None) -> tuple:
    """From now on (in this task) log lines carry these ids; returns the token to `reset_request_context`."""
    return _REQUEST_ID.set(request_id), _TRACE_ID.set(trace_id)


def reset_request_context(token: tuple) -> None:
    _REQUEST_ID.reset(token[0])
    _TRACE_ID.reset(token[1])


@contextlib.contextmanager
def request_context(request_id: str | None, trace_id: str | None = None) -> Iterator[None]:
    """Every line logged inside carries `request_id` (and `trace_id`)."""
    token = set_request_context(request_id, trace_id)
    try:
        yield
    finally:
        reset_request_context(token)


def fields(**values) -> dict:
    """`log.info(message, extra=fields(status=200, ...))`: one line's structured fields (None: left out)."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


class _RequestIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        record.trace_id = _TRACE_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, service, logger, message, ids, fields, exception."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, then the request id and the structured fields as key=value."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = dict(getattr(record, "fields", None) or {})
        if getattr(record, "request_id", None) and "request_id" not in extra:
            extra = {"request_id": record.request_id, **extra}
        if not extra:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the line
        return first + "".join(f" {k}={_text(v)}" for k, v in extra.items()) + newline + rest


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and (not value or any(c.isspace() or c in '"=' for c in value)):
        return json.dumps(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


class RepeatFilter(logging.Filter):
    """Lets through at most `burst` warnings or errors of one kind (logger, message template, exception
    type) per `window_s`, then one line saying how many were held back.

    A fault that repeats per connection or per request (descriptors exhausted, an engine refusing every
    call) would otherwise write a traceback per occurrence: megabytes a second of one message, drowning
    the rest and filling the disk. Info lines (one per request, by design) are never held back.
    """

    def __init__(self, burst: int = 10, window_s: float = 60.0, max_kinds: int = 1024):
        super().__init__()
        self.burst, self.window_s, self.max_kinds = burst, window_s, max_kinds
        self._seen: dict[tuple, list] = {}  # kind -> [window start, count in the window]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, str(record.msg), exc)
        now = record.created
        with self._lock:
            seen = self._seen.get(kind)
            if seen is None or now - seen[0] >= self.window_s:
                held = seen[1] - self.burst if seen is not None and seen[1] > self.burst else 0
                if len(self._seen) >= self.max_kinds:
                    self._seen.clear()
                self._seen[kind] = [now, 1]
                if held:
                    record.msg = f"{record.msg} ({held} more like this in the last {self.window_s:.0f} s)"
                return True
            seen[1] += 1
            return seen[1] <= self.burst


def setup_logging(log_format: str, service: str, level: int = logging.INFO) -> None:
    """Root logging for a service's process: `text` or `json` lines on stderr, repeats held back."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIds())
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
