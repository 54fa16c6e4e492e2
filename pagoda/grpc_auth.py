"""Authentication between Pagoda's own gRPC services: a shared token, `authorization: Bearer TOKEN`.

The engine and the tokenizer service answer only callers that present a token from their
`--grpc-token-file` (one token a line, so that a new one can be rolled in beside the old); everything
but grpc.health.v1 needs it, since kubelet probes carry no metadata. The router (and `pagoda serve`'s
children) send the first token of theirs. Tokens are held as SHA-256 digests and compared in constant
time, against every accepted token. Mutual TLS (pagoda/tls.py) can be used instead or as well.

A caller's identity (`caller_identity`) tags what it starts, so that it alone can end it (the engine's
Abort): its token's digest, else its TLS certificate's name, else its connection.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_KEY = "authorization"


class TokenFileError(ValueError):
    pass


def read_tokens(path: str) -> tuple[str, ...]:
    """The tokens of a token file (blank lines and # comments skipped); at least one, or TokenFileError."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise TokenFileError(f"cannot read the gRPC token file {path}: {err.strerror}") from None
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise TokenFileError(f"the gRPC token file {path} holds no token")
    return tokens


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """What a client adds to each call's metadata."""
    return ((_KEY, f"Bearer {token}"),) if token else ()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == _KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call without an accepted token, health checks aside."""

    def __init__(self, tokens: tuple[str, ...]):
        self._digests = tuple(_digest(t) for t in tokens)

    def accepts(self, token: str | None) -> bool:
        if token is None:
            return False
        candidate, valid = _digest(token), False
        for digest in self._digests:  # no early exit: every token is compared
            valid |= hmac.compare_digest(candidate, digest)
        return valid

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(OPEN_PREFIXES) or self.accepts(_bearer(details.invocation_metadata)):
            return await continuation(details)
        handler = await continuation(details)
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind that answers UNAUTHENTICATED without reading the request."""

    async def refuse(request, context):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "this service needs `authorization: Bearer TOKEN` (--grpc-token-file)",
        )

    async def refuse_stream(request, context):
        await refuse(request, context)
        yield  # pragma: no cover (an async generator, for server-streaming methods)

    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def caller_identity(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, as far as the service can tell: a token digest, a certificate name, or the peer."""
    token = _bearer(context.invocation_metadata())
    if token is not None:
        return "token:" + _digest(token).hex()[:32]
    names = (context.auth_context() or {}).get("x509_common_name")
    if names:
        return "cert:" + names[0].decode(errors="replace")
    return "peer:" + (context.peer() or "")


def server_interceptors(token_file: str | None) -> list[grpc.aio.ServerInterceptor]:
    return [TokenAuth(read_tokens(token_file))] if token_file else []
