"""The router's gRPC channels to engines and tokenizers: one set of options, plaintext or TLS."""

from __future__ import annotations

import grpc

from pagoda.grpc_auth import call_metadata
from pagoda.tls import ChannelTls

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Fail fast and let the registry's backoff decide when to try again.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class ChannelFactory:
    """Opens channels with the router's options; with `tls`, verified TLS (mutual when it has a cert).
    The credentials are built once, so every channel shares the PEM files read at start-up. `token`: the
    gRPC token engines and tokenizers ask for (--grpc-token-file); every call carries `metadata`."""

    def __init__(self, tls: ChannelTls | None = None, token: str | None = None):
        self._tls = tls
        self._credentials = tls.credentials() if tls is not None else None
        self.metadata: tuple[tuple[str, str], ...] = call_metadata(token)

    def __call__(self, target: str, extra_options: list[tuple[str, object]] = ()) -> grpc.aio.Channel:
        options = [*CHANNEL_OPTIONS, *extra_options]
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials, options=options + self._tls.options())
