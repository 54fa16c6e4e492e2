"""Certificates renewed in place are used without a restart: the engine's and the tokenizer's gRPC ports,
the router's HTTPS port, and the router's own client certificate towards them.

The files are rotated the way the kubelet updates a mounted Secret (cert-manager's renewals arrive so):
every file is a symlink through `..data`, which is swapped atomically to a folder with the new files.
A new connection must then see the new certificate; half-written or mismatched files are not taken.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("cryptography")
from reliability_certs import Authority, Pair  # noqa: E402

from engine_service.core.config import EngineConfig  # noqa: E402
from engine_service.server.grpc_server import EngineServer  # noqa: E402
from engine_service.server.service_config import EngineServiceConfig  # noqa: E402
from pagoda.tls import ChannelTls, ServerTls  # noqa: E402
from router.app import _watch_channel_tls, start  # noqa: E402
from router.config import RouterConfig  # noqa: E402
from router.upstream.channels import ChannelFactory  # noqa: E402
from router.upstream.engines import EngineRegistry  # noqa: E402
from router.upstream.tokenizer import Tokenizers  # noqa: E402
from tokenizer_service.config import TokenizerConfig  # noqa: E402
from tokenizer_service.server import TokenizerServer  # noqa: E402

NAME = "pagoda-grpc"


class SecretVolume:
    """A folder laid out like a mounted Kubernetes Secret: `tls.crt -> ..data/tls.crt`, `..data -> ..vN`."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir()
        self._version = 0

    def path(self, key: str) -> str:
        return str(self.folder / key)

    def write(self, files: dict[str, bytes]) -> None:
        self._version += 1
        version = self.folder / f"..v{self._version}"
        version.mkdir()
        for key, data in files.items():
            (version / key).write_bytes(data)
            if not (self.folder / key).is_symlink():
                (self.folder / key).symlink_to(Path("..data") / key)
        tmp = self.folder / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.folder / "..data")  # the kubelet's atomic swap


def pem(pair: Pair) -> dict[str, bytes]:
    return {"tls.crt": pair.cert.read_bytes(), "tls.key": pair.key.read_bytes()}


def der(pair: Pair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert.read_text())


async def served_certificate(port: int, alpn: str | None) -> bytes:
    """The certificate a new TLS connection to 127.0.0.1:port is served (DER), read with Python's ssl."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only reading what is served
    if alpn:
        context.set_alpn_protocols([alpn])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()


async def health(port: int, ca: Path, client: Pair | None = None) -> int:
    """A gRPC health check over a fresh TLS channel that trusts `ca` (and presents `client`)."""
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )
    options = [("grpc.ssl_target_name_override", NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return answer.status


@pytest.fixture
def certs(tmp_path):
    folder = tmp_path / "issued"
    folder.mkdir()
    old, new = Authority(folder, "old-ca"), Authority(folder, "new-ca")
    return {
        "old_ca": old,
        "new_ca": new,
        "old": old.issue("old-server", dns=(NAME, "localhost"), ips=("127.0.0.1",)),
        "new": new.issue("new-server", dns=(NAME, "localhost"), ips=("127.0.0.1",)),
        "old_client": old.issue("old-client", client=True, server=False),
        "new_client": new.issue("new-client", client=True, server=False),
    }


async def _start_grpc_servers(tls: ServerTls) -> list:
    tokenizer = TokenizerServer(TokenizerConfig(host="127.0.0.1", port=0, metrics_port=0, tls=tls))
    engine = EngineServer(
        EngineServiceConfig(
            engine=EngineConfig(model="unused"), host="127.0.0.1", port=0, metrics_port=0, tls=tls
        )
    )
    await tokenizer.start()  # bound and answering health (NOT_SERVING: no model is loaded, none is needed)
    await engine.start()
    return [tokenizer, engine]


async def test_grpc_servers_and_https_router_serve_the_renewed_certificate(tmp_path, certs):
    volume = SecretVolume(tmp_path / "secret")
    volume.write(pem(certs["old"]))
    servers = await _start_grpc_servers(ServerTls(volume.path("tls.crt"), volume.path("tls.key")))
    config = RouterConfig(
        host="127.0.0.1", port=0, tls_cert=volume.path("tls.crt"), tls_key=volume.path("tls.key")
    )
    router = await start(config)
    ports = [(s.port, "h2") for s in servers] + [(router.addresses[0][1], None)]
    try:
        for port, alpn in ports:
            assert await served_certificate(port, alpn) == der(certs["old"])
        for server in servers:
            assert (
                await health(server.port, certs["old_ca"].cert) == health_pb2.HealthCheckResponse.NOT_SERVING
            )

        # A renewal whose key does not match its certificate (caught half-way) is not taken...
        volume.write({"tls.crt": certs["new"].cert.read_bytes(), "tls.key": certs["old"].key.read_bytes()})
        for port, alpn in ports:
            assert await served_certificate(port, alpn) == der(certs["old"])
        # ... the whole renewal is, by the next new connection, with no restart.
        volume.write(pem(certs["new"]))
        for port, alpn in ports:
            assert await served_certificate(port, alpn) == der(certs["new"])
        for server in servers:
            assert (
                await health(server.port, certs["new_ca"].cert) == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            with pytest.raises(grpc.aio.AioRpcError):  # the old CA no longer verifies what is served
                await health(server.port, certs["old_ca"].cert)
    finally:
        await router.cleanup()
        for server in servers:
            await server.stop(0)


async def test_router_client_certificate_and_ca_are_reloaded(tmp_path, certs, tiny_model_dir):
    """Mutual TLS: the tokenizer's server certificate and client CA move to a new CA, and so do the
    router's CA and client certificate. The router's watcher reopens its channels: calls on them work."""
    server_volume, router_volume = SecretVolume(tmp_path / "server"), SecretVolume(tmp_path / "router")
    old_ca, new_ca = certs["old_ca"].cert.read_bytes(), certs["new_ca"].cert.read_bytes()
    server_volume.write({**pem(certs["old"]), "ca.crt": old_ca})
    router_volume.write({**pem(certs["old_client"]), "ca.crt": old_ca})
    tls = ServerTls(
        server_volume.path("tls.crt"), server_volume.path("tls.key"), server_volume.path("ca.crt")
    )
    server = TokenizerServer(
        TokenizerConfig(
            model=str(tiny_model_dir), host="127.0.0.1", port=0, metrics_port=0, workers=1, tls=tls
        )
    )
    await server.start()
    await server.load()
    client_tls = ChannelTls(
        router_volume.path("ca.crt"), router_volume.path("tls.crt"), router_volume.path("tls.key"), NAME
    )
    connect = ChannelFactory(client_tls)
    address = f"127.0.0.1:{server.port}"
    tokenizers = Tokenizers(address, {}, 5.0, connect)
    registry = EngineRegistry(
        interval_s=1,
        probe_timeout_s=1,
        failures_to_eject=1,
        max_backoff_s=1,
        drain_grace_s=1,
        connect=connect,
    )
    watcher = asyncio.create_task(_watch_channel_tls(connect, registry, tokenizers, 0.05))
    try:
        assert (await tokenizers.for_model("m").encode_text("hello")).num_tokens > 0
        server_volume.write({**pem(certs["new"]), "ca.crt": new_ca})
        router_volume.write({**pem(certs["new_client"]), "ca.crt": new_ca})
        # A channel with the router's old files is refused now: the server trusts only the new CA.
        stale = ChannelFactory(ChannelTls(str(certs["old_ca"].cert), str(certs["old_client"].cert),
                                          str(certs["old_client"].key), NAME))  # fmt: skip
        from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

        async with stale(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tokenizer_pb2_grpc.TokenizerServiceStub(channel).Encode(
                    tokenizer_pb2.EncodeRequest(text="hello"), timeout=5
                )
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        deadline = asyncio.get_running_loop().time() + 5
        while connect.generation == 0:
            assert asyncio.get_running_loop().time() < deadline, "the router never reloaded its files"
            await asyncio.sleep(0.05)
        # The watcher reopened the channel: the router presents its new certificate and trusts the new CA.
        assert (await tokenizers.for_model("m").encode_text("hello again")).num_tokens > 0
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await tokenizers.close()
        await registry.close()
        await server.stop(0)
