"""The router's gRPC channels to engines and tokenizers: one set of options, plaintext or TLS.

Keepalive is agreed with the servers in pagoda/grpc_keepalive.py. With TLS, `refresh()` re-reads the CA and
client certificate when their files change (a cert-manager renewal) and moves `generation` on; the
channels' owners then reopen theirs, so that new connections present the new certificate.
"""

from __future__ import annotations

import logging

import grpc

from pagoda.grpc_auth import call_metadata
from pagoda.grpc_keepalive import CLIENT_TIME_S, client_options
from pagoda.tls import ChannelTls, FileWatch, TlsConfigError, check_key_matches

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Fail fast and let the registry's backoff decide when to try again.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class ChannelFactory:
    """Opens channels with the router's options; with `tls`, verified TLS (mutual when it has a cert).
    The credentials are built once and rebuilt by `refresh()` when the PEM files change. `token`: the gRPC
    token engines and tokenizers ask for (--grpc-token-file); every call carries `metadata`."""

    def __init__(
        self,
        tls: ChannelTls | None = None,
        keepalive_time_s: float = CLIENT_TIME_S,
        token: str | None = None,
    ):
        self._tls = tls
        self._options = [*client_options(keepalive_time_s), *CHANNEL_OPTIONS]
        self._watch = FileWatch(tls.paths) if tls is not None else None
        self._credentials = _credentials(tls) if tls is not None else None
        self.generation = 0  # moves on each time the credentials are rebuilt
        self.metadata: tuple[tuple[str, str], ...] = call_metadata(token)

    def __call__(self, target: str, extra_options: list[tuple[str, object]] = ()) -> grpc.aio.Channel:
        options = [*self._options, *extra_options]
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, self._credentials, options=options + self._tls.options())

    def refresh(self) -> bool:
        """Re-reads the TLS files if they changed; True when channels opened from now on use new ones."""
        if self._watch is None or not self._watch.changed():
            return False
        # Tried once per change: files still being written change again.
        self._watch.accept(self._watch.stamp())
        try:
            self._credentials = _credentials(self._tls)
        except TlsConfigError as err:
            log.warning("gRPC TLS files changed but cannot be used yet (keeping the current ones): %s", err)
            return False
        self.generation += 1
        log.info("reloaded the gRPC TLS files (%s); reconnecting", ", ".join(self._watch.paths))
        return True


def _credentials(tls: ChannelTls) -> grpc.ChannelCredentials:
    if tls.cert is not None:
        check_key_matches(tls.cert, tls.key, "--grpc-tls-cert / --grpc-tls-key")
    return tls.credentials()
