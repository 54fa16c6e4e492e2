"""TLS from PEM files: HTTPS for the router, and TLS or mutual TLS on the gRPC hops (router to engines and
tokenizer). A missing or unreadable file at start-up is an error that names the flag.

    server side (engine, tokenizer)     --tls-cert --tls-key [--tls-client-ca: require client certificates]
    client side (router)                --grpc-tls-ca [--grpc-tls-cert --grpc-tls-key: present one]

Certificates are renewed in place (cert-manager rewrites the Secret; the kubelet swaps the mounted files
through a `..data` symlink), so every side re-reads its files when they change: servers check before
each new connection's handshake (a cheap stat), and the router's channels are rebuilt when its client
files change (router/upstream/channels.py). Connections already open keep the certificate they began
with. A half-written or mismatched set of files is not taken: the last good one stays in use until the
files are whole again.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """A TLS flag names a file that cannot be used."""


def read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TlsConfigError(f"{flag} {path}: {err.strerror or err}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{flag} {path}: not a PEM file")
    return data


def check_key_matches(cert: str, key: str, flags: str) -> None:
    """The key is the certificate's (a renewal caught between writing the two files is not)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise TlsConfigError(f"{flags} {cert} / {key}: {err.reason or err}") from None
    except OSError as err:
        raise TlsConfigError(f"{flags} {cert} / {key}: {err.strerror or err}") from None


class FileWatch:
    """Tells when any of some files changed: each file's (inode, mtime, size), symlinks followed, so that
    a Kubernetes Secret volume's symlink swap counts as a change even where mtimes repeat."""

    def __init__(self, paths: Iterable[str | None]):
        self.paths = tuple(p for p in paths if p)
        self._seen = self.stamp()

    def stamp(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def changed(self) -> bool:
        return self.stamp() != self._seen

    def accept(self, stamp: tuple) -> None:
        """Marks `stamp` (taken before the files are read) as seen: the next change is one after it."""
        self._seen = stamp


def check_pair(cert: str | None, key: str | None, flags: str) -> None:
    """Certificate and key come together or not at all."""
    if (cert is None) != (key is None):
        raise TlsConfigError(f"{flags}: give both or neither")


@dataclass(frozen=True)
class ServerTls:
    """A gRPC server's certificate and key, and the CA its clients' certificates must chain to (if any)."""

    cert: str
    key: str
    client_ca: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p)

    def credentials(self):
        """Server credentials that re-read the files before a new connection's handshake when they changed
        (gRPC asks the fetcher before every handshake; None keeps the current certificate)."""
        import grpc

        watch = FileWatch(self.paths)

        def fetch():
            if not watch.changed():
                return None
            watch.accept(watch.stamp())  # tried once per change: files still being written change again
            try:
                configuration = self._configuration()
            except Exception as err:  # never raise into gRPC's handshake: keep the last good certificate
                log.warning("TLS files changed but cannot be used yet (keeping the current ones): %s", err)
                return None
            log.info("reloaded the TLS certificate from %s", self.cert)
            return configuration

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), fetch, require_client_authentication=self.client_ca is not None
        )

    def _configuration(self):
        import grpc

        check_key_matches(self.cert, self.key, "--tls-cert / --tls-key")
        pair = (read_pem(self.key, "--tls-key"), read_pem(self.cert, "--tls-cert"))
        roots = read_pem(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)


@dataclass(frozen=True)
class ChannelTls:
    """How a gRPC client verifies servers (`ca`), what it presents for mutual TLS (`cert`, `key`), and the
    name it expects in server certificates when that is not the address dialled (pods are dialled by IP)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self):
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "--grpc-tls-ca"),
            private_key=read_pem(self.key, "--grpc-tls-key") if self.key else None,
            certificate_chain=read_pem(self.cert, "--grpc-tls-cert") if self.cert else None,
        )

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.ca, self.cert, self.key) if p)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def add_server_tls_args(p: argparse.ArgumentParser) -> None:
    """The TLS flags of the gRPC services (`pagoda engine`, `pagoda tokenizer`)."""
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", help="serve gRPC over TLS with this PEM certificate chain (with --tls-key)")
    g.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    g.add_argument("--tls-client-ca", help="require client certificates signed by this PEM CA (mutual TLS)")
    g.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="also serve grpc.health.v1 alone, in plaintext, on this port (kubelet gRPC probes cannot "
        "speak TLS); 0: off",
    )


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The ServerTls those flags ask for, or None; a TlsConfigError (a ValueError) for an incomplete set
    or a file that is missing or not PEM, so that a bad flag fails before anything starts."""
    check_pair(args.tls_cert, args.tls_key, "--tls-cert and --tls-key")
    if args.tls_cert is None:
        if args.tls_client_ca:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        read_pem(path, flag)
    check_key_matches(args.tls_cert, args.tls_key, "--tls-cert / --tls-key")
    if args.tls_client_ca:
        read_pem(args.tls_client_ca, "--tls-client-ca")
    return ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)


def http_server_context(cert: str, key: str) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2 or newer) from a certificate chain and its key, which serves the
    files' current certificate to each new connection: a handshake that finds them changed loads them
    into a fresh context and switches to it (the `sni_callback` runs for every ClientHello, with or
    without a server name)."""
    read_pem(cert, "--tls-cert")  # clear errors before ssl's terse ones
    read_pem(key, "--tls-key")
    first = _http_context(cert, key)
    watch = FileWatch((cert, key))
    current = first

    def on_client_hello(ssl_object, server_name, context) -> None:
        nonlocal current
        if watch.changed():
            watch.accept(watch.stamp())  # tried once per change: files still being written change again
            try:
                current = _http_context(cert, key)
                log.info("reloaded the HTTPS certificate from %s", cert)
            except TlsConfigError as err:
                log.warning("HTTPS files changed but cannot be used yet (keeping the current ones): %s", err)
        if current is not first:
            ssl_object.context = current

    first.sni_callback = on_client_hello
    return first


def _http_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise TlsConfigError(f"--tls-cert {cert} / --tls-key {key}: {err.reason or err}") from None
    except OSError as err:
        raise TlsConfigError(f"--tls-cert {cert} / --tls-key {key}: {err.strerror or err}") from None
    return context
