"""TLS from PEM files: HTTPS for the router, and TLS or mutual TLS on the gRPC hops (router to engines and
tokenizer). Files are read once at start-up; a missing or unreadable file is an error that names the flag.

    server side (engine, tokenizer)     --tls-cert --tls-key [--tls-client-ca: require client certificates]
    client side (router)                --grpc-tls-ca [--grpc-tls-cert --grpc-tls-key: present one]
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path


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

    def credentials(self):
        import grpc

        pair = (read_pem(self.key, "--tls-key"), read_pem(self.cert, "--tls-cert"))
        if self.client_ca is None:
            return grpc.ssl_server_credentials([pair])
        return grpc.ssl_server_credentials(
            [pair], root_certificates=read_pem(self.client_ca, "--tls-client-ca"), require_client_auth=True
        )


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
    if args.tls_client_ca:
        read_pem(args.tls_client_ca, "--tls-client-ca")
    return ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)


def http_server_context(cert: str, key: str) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2 or newer) from a certificate chain and its key."""
    read_pem(cert, "--tls-cert")  # clear errors before ssl's terse ones
    read_pem(key, "--tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise TlsConfigError(f"--tls-cert {cert} / --tls-key {key}: {err.reason or err}") from None
    return context
