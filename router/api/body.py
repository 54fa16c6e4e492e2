"""Reading a request body, defensively: every way a body can be wrong is a 4xx in OpenAI's format, and no
body, however large or slow, holds up the event loop that serves every other client.

    Content-Length over --max-body-bytes       413 at once, before a byte is read (also as the answer to
                                               `Expect: 100-continue`: see `expect_handler`)
    a body that takes over --body-timeout      408
    larger than --max-body-bytes as it comes   413
    Content-Encoding gzip / deflate            decoded in a thread, at most --max-body-bytes of output (a
                                               zip bomb is a 413, a body that is not what it claims a 400)
    another Content-Encoding                   415
    a non-JSON Content-Type (form, text...)    415
    not JSON, or not UTF-8                     400
    nested deeper than MAX_DEPTH               400 (a deep body would otherwise exhaust Python's recursion
                                               when parsed, or later when re-serialized)
    a string holding a lone UTF-16 surrogate   400 (valid JSON, but no UTF-8 encoding exists for it, so
                                               protobuf would fail to send it on)

Parsing holds the GIL: `json.loads` of a 57 MB body takes from 0.2 s (one string) to 3 s (a list of ints)
in one C call, during which no other thread of the process runs Python. So a body up to INLINE_BYTES is
parsed on the event loop (under ~25 ms at worst), and a larger one, decoding and the route's own request
parser included, in a worker process (body_pool.py): what comes back is the parsed request or its error.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib

from aiohttp import web

from router.errors import OpenAIError, bad_request

MAX_DEPTH = 32  # the deepest legitimate body (chat_template_kwargs inside a request) is a few levels
INLINE_BYTES = 256 * 1024  # larger bodies are parsed in the body pool's process

# Content types read as JSON: JSON itself, and "unknown" (none given, or the generic byte stream that some
# clients send for raw bytes). Anything else is a different format the client meant to send.
_JSON_TYPES = frozenset({"application/json", "application/octet-stream", ""})
# zlib's wbits: gzip framing, or zlib framing ("deflate" as HTTP means it, RFC 9110), or raw deflate.
_ENCODINGS = {
    "gzip": (16 + zlib.MAX_WBITS,),
    "x-gzip": (16 + zlib.MAX_WBITS,),
    "deflate": (zlib.MAX_WBITS, -15),
}
# A JSON escape of a UTF-16 surrogate; a surrogate pair (an escaped emoji) decodes to one valid character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_bytes(request: web.Request, timeout_s: float) -> bytes:
    """The raw body, within the size limit and the body timeout."""
    content_type = request.content_type if request.headers.get("Content-Type") else ""
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise OpenAIError(
            415,
            f"The request body must be JSON (Content-Type: application/json), got {content_type!r}.",
            code="unsupported_media_type",
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity" and encoding not in _ENCODINGS:
        raise OpenAIError(
            415,
            f"Content-Encoding {encoding!r} is not supported: send the body as is, or gzip or deflate it.",
            code="unsupported_media_type",
        )
    length = request.content_length
    if length is not None and length > request.client_max_size:
        raise too_large(request.client_max_size)
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(request.client_max_size) from None
    except TimeoutError:
        raise OpenAIError(
            408,
            f"The request body did not arrive within {timeout_s:g} s.",
            code="request_timeout",
            close_connection=True,
        ) from None


def too_large(limit: int) -> OpenAIError:
    # Closing the connection spares reading (and discarding) the rest of a body nobody will use.
    return OpenAIError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes.",
        code="request_too_large",
        close_connection=True,
    )


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: a body announced larger than the limit gets its 413 instead of a go-ahead."""
    length = request.content_length
    if length is not None and length > request.client_max_size:
        return too_large(request.client_max_size).response()
    if request.headers.get("Expect", "").lower() != "100-continue":
        return OpenAIError(417, "Only `Expect: 100-continue` is understood.").response()
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


# ---- pure functions: on the event loop for small bodies, in the body pool's process for large ones ----


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body with its Content-Encoding undone, never more than `limit` bytes of output."""
    if encoding == "identity":
        return raw
    for wbits in _ENCODINGS[encoding]:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(raw, limit + 1)  # at most limit + 1 bytes, whatever the ratio
        except zlib.error:
            continue  # "deflate" may also be raw deflate: try the next framing
        if len(out) > limit:
            raise too_large(limit)
        if not inflater.eof or inflater.unused_data:
            raise bad_request(f"The request body is not one complete {encoding} stream (Content-Encoding).")
        return out
    raise bad_request(f"The request body is not {encoding} data, as its Content-Encoding says.")


def parse_json(raw: bytes) -> object:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise bad_request(f"The request body is not valid UTF-8: {err.reason} at byte {err.start}.") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as err:
        raise bad_request(f"The request body is not valid JSON: {err}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_exceeds(body, MAX_DEPTH):
        raise _too_deep()
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(body):
        raise bad_request("A string in the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff).")
    return body


def _too_deep() -> OpenAIError:
    return bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.")


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep; iterative, so no recursion limit."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _encodable(value: object) -> bool:
    """Whether every string (keys included) encodes to UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
