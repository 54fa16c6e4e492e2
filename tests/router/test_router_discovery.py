"""Engine discovery: DNS names, and Kubernetes EndpointSlices through the real `kubernetes` client against
a fake API server that speaks the real list/watch JSON."""

from __future__ import annotations

import socket

import pytest
from fake_kube import FakeKubeApi, endpoint, endpoint_slice
from router_fakes import Script

from router.upstream.discovery import host_port
from router.upstream.discovery.dns import DnsDiscovery
from router.upstream.discovery.kubernetes import ready_addresses
from tests.router.conftest import wait_for

MSGS = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_set(stack) -> set[str]:
    return {e.address for e in stack.ctx.registry.engines if e.ready}


async def test_dns_names_resolve_to_engines(make_stack):
    stack = await make_stack([Script()], static=False, engine_dns=(), wait_ready=False)
    port = stack.engine_ports[0]
    dns = DnsDiscovery(f"localhost:{port}", interval_s=60)
    assert f"127.0.0.1:{port}" in await dns.resolve()
    assert await DnsDiscovery("no-such-engine.invalid:50051", 60).resolve() == set()  # NXDOMAIN: no engines
    with pytest.raises(ValueError):
        DnsDiscovery("no-port", 60)
    assert host_port("fd00::1", 50051) == "[fd00::1]:50051"


async def test_router_with_dns_discovery_serves(make_stack):
    port = free_port()
    stack = await make_stack([Script()], static=False, engine_port=port, engine_dns=(f"localhost:{port}",))
    r = await stack.client().chat.completions.create(model="scripted", messages=MSGS, max_tokens=2)
    assert r.choices[0].message.content == "He"


def test_ready_addresses_follow_the_conditions():
    s = endpoint_slice(
        "x",
        "svc",
        [
            endpoint("10.0.0.1"),
            endpoint("10.0.0.2", ready=False),
            endpoint("10.0.0.3", ready=False, terminating=True),
            endpoint("10.0.0.4", ready=None),  # unknown readiness counts as ready
            endpoint("10.0.0.5", ready=True, terminating=True),  # terminating never takes new requests
        ],
    )
    assert ready_addresses(s, 7) == {"10.0.0.1:7", "10.0.0.4:7"}
    assert ready_addresses(endpoint_slice("empty", "svc", []), 7) == set()


@pytest.fixture
async def kube(tmp_path):
    api = FakeKubeApi()
    url = await api.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: tester, user: {{token: test-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: tester, namespace: llm}}}}]
current-context: fake
"""
    )
    yield api, str(kubeconfig)
    await api.stop()


async def test_endpointslice_discovery_follows_readiness_and_termination(make_stack, kube):
    api, kubeconfig = kube
    port = free_port()
    ips = ["127.0.0.1", "127.0.0.2"]  # two "pods" on one port, as in a cluster
    both = {f"{ip}:{port}" for ip in ips}
    await api.apply(endpoint_slice("engine-abc", "pagoda-engine", [endpoint(ip) for ip in ips]))
    # Another Service's slice in the same namespace, and ours in another namespace: neither is ours.
    await api.apply(endpoint_slice("other-xyz", "other", [endpoint("127.0.0.3")]))
    await api.apply(endpoint_slice("engine-def", "pagoda-engine", [endpoint("127.0.0.4")], namespace="prod"))
    stack = await make_stack(
        [Script(), Script()],
        engine_hosts=ips,
        engine_port=port,
        static=False,
        wait_ready=False,
        k8s_namespace="llm",
        k8s_service="pagoda-engine",
        k8s_engine_port=port,
        kubeconfig=kubeconfig,
    )
    await wait_for(lambda: ready_set(stack) == both, what="both engines from the slice")
    r = await stack.client().chat.completions.create(model="scripted", messages=MSGS, max_tokens=1)
    assert r.choices[0].finish_reason == "length"
    assert api.requests[0]["labelSelector"] == "kubernetes.io/service-name=pagoda-engine"

    # A pod failing its readiness probe leaves; coming back ready returns it.
    await api.apply(
        endpoint_slice("engine-abc", "pagoda-engine", [endpoint(ips[0]), endpoint(ips[1], ready=False)])
    )
    await wait_for(lambda: ready_set(stack) == {f"{ips[0]}:{port}"}, what="the not-ready pod to leave")
    await api.apply(endpoint_slice("engine-abc", "pagoda-engine", [endpoint(ip) for ip in ips]))
    await wait_for(lambda: ready_set(stack) == both, what="the pod to come back")

    # A terminating pod leaves at once, while an in-flight stream on it still finishes.
    stack.engines[1].script.delay_s = 0.02
    stack.engines[0].script.delay_s = 0.02
    stream = await stack.client().chat.completions.create(model="scripted", messages=MSGS, stream=True)
    busy = 0 if stack.engines[0].active else 1  # the pod serving the stream is the one that terminates
    slice_ = [
        endpoint(ip, ready=False, terminating=True) if i == busy else endpoint(ip) for i, ip in enumerate(ips)
    ]
    await api.apply(endpoint_slice("engine-abc", "pagoda-engine", slice_))
    await wait_for(
        lambda: ready_set(stack) == {f"{ips[1 - busy]}:{port}"}, what="the terminating pod to leave"
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == Script().reply and stack.engines[busy].finished

    # The slice deleted: no engines, /health says so.
    await api.delete("llm", "engine-abc")
    await wait_for(lambda: not stack.ctx.registry.engines, what="every engine gone")
    assert (await stack.get("/health"))[0] == 503

    # History compacted (410 Gone): the router lists again and finds the new slice.
    await api.compact()
    await api.apply(endpoint_slice("engine-ghi", "pagoda-engine", [endpoint(ips[1])]))
    await wait_for(lambda: ready_set(stack) == {f"{ips[1]}:{port}"}, what="the slice after a re-list")
    assert api.gone_sent >= 1
    watches = [q for q in api.requests if q.get("watch") in ("true", "1")]
    assert watches and all(q.get("allowWatchBookmarks") == "true" for q in watches)
