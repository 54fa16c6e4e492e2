"""Reading a request body as JSON, defensively: every way a body can be wrong is a 4xx in OpenAI's format.

    too large (over --max-body-bytes)          413 (aiohttp stops reading at the limit)
    a non-JSON Content-Type (form, text...)    415
    not JSON, or not UTF-8                     400
    nested deeper than MAX_DEPTH               400 (a deep body would otherwise exhaust Python's recursion
                                               when parsed, or later when re-serialized)
    a string holding a lone UTF-16 surrogate   400 (valid JSON, but no UTF-8 encoding exists for it, so
                                               protobuf would fail to send it on)

The checks after parsing cost nothing for ordinary bodies: each runs only when a cheap byte count says the
body could fail it.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from router.errors import OpenAIError, bad_request

MAX_DEPTH = 32  # the deepest legitimate body (chat_template_kwargs inside a request) is a few levels

# Content types read as JSON: JSON itself, and "unknown" (none given, or the generic byte stream that some
# clients send for raw bytes). Anything else is a different format the client meant to send.
_JSON_TYPES = frozenset({"application/json", "application/octet-stream", ""})
# A JSON escape of a UTF-16 surrogate; a surrogate pair (an escaped emoji) decodes to one valid character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json(request: web.Request) -> object:
    content_type = request.content_type if request.headers.get("Content-Type") else ""
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise OpenAIError(
            415,
            f"The request body must be JSON (Content-Type: application/json), got {content_type!r}.",
            code="unsupported_media_type",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise OpenAIError(
            413,
            f"The request body is larger than this server's limit of {request.client_max_size} bytes.",
            code="request_too_large",
        ) from None
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
