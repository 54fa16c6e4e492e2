"""Security with real processes: API keys, per-request and per-key limits, prefix-cache isolation between
tenants, and TLS (HTTPS on the router, mutual TLS from the router to engines and tokenizer).

Certificates are made here (reliability_certs.py); the key and limit tests share one router started
with keys, limits and per-key cache salts in front of the session's engines.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_client import Outcome, post
from reliability_stack import MODEL, Stack, Tls, chat_body

from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc

KEYS = ("sk-alpha-0123456789", "sk-beta-9876543210")
FILE_KEY, NEW_FILE_KEY = "sk-from-file-1111", "sk-from-file-2222"
MAX_TOKENS = 300  # the keys router's --max-tokens-limit: a stream that long lasts a few seconds
SYSTEM = "You are a careful assistant who answers every question in one short sentence. " * 3


def headers(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


@pytest.fixture(scope="module")
def keys_router(shared_stack, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys"
    key_file.write_text(f"# rotated by the operator\n{FILE_KEY}\n")
    args = ["--api-key", KEYS[0], "--api-key", KEYS[1], "--api-key-file", str(key_file), "--log-requests"]
    args += [
        "--salt-cache-per-api-key",
        "--max-concurrent-streams-per-key",
        "2",
        "--max-prompt-tokens",
        "200",
    ]
    args += ["--max-tokens-limit", str(MAX_TOKENS), "--max-body-bytes", str(1 << 20)]
    router = shared_stack.start_router(*args)
    router.key_file = key_file
    return router


async def chat(s, router, key, body, **kw):
    return await post(s, router.url + "/v1/chat/completions", body, headers=headers(key), **kw)


async def raw_chat(s, router, key, body) -> tuple[int, dict, dict]:
    async with s.post(router.url + "/v1/chat/completions", json=body, headers=headers(key)) as r:
        return r.status, json.loads(await r.read()), dict(r.headers)


async def test_api_keys(stack, keys_router, tally):
    t = tally("security: API keys (two flag keys, a key file reloaded live, wrong and missing keys)")
    async with aiohttp.ClientSession() as s:
        for key in (*KEYS, FILE_KEY):
            t.add(o := await chat(s, keys_router, key, chat_body(1, 2, stream=False)))
            assert o.kind == "ok", o
        bodies = set()
        for key in (None, "sk-wrong", KEYS[0][:-1], KEYS[0] + "x", KEYS[1].upper(), "\u00e9\u00e8"):
            status, body, _ = await raw_chat(s, keys_router, key, chat_body(1, 2, stream=False))
            t.add(Outcome("error" if status == 401 else "lost", status))
            assert status == 401 and body["error"]["code"] == "invalid_api_key", (key, status, body)
            if key is not None:
                bodies.add(json.dumps(body))
        # A near miss (one character short or long, the wrong case) reads exactly like any wrong key.
        assert len(bodies) == 1, bodies
        # Header bytes that are not UTF-8 are a 401, not a crash.
        reader, writer = await asyncio.open_connection("127.0.0.1", int(keys_router.url.rsplit(":", 1)[1]))
        payload = json.dumps(chat_body(1, 2, stream=False)).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(payload), payload)
        )
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401", status_line
        # The key file is re-read when it changes: the new key works, the removed one stops working.
        keys_router.key_file.write_text(f"{NEW_FILE_KEY}\n")
        for _ in range(100):
            if (await raw_chat(s, keys_router, NEW_FILE_KEY, chat_body(2, 2, stream=False)))[0] == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the new key from the file was never accepted")
        assert (await raw_chat(s, keys_router, FILE_KEY, chat_body(2, 2, stream=False)))[0] == 401
    # No key, right or wrong, ever reaches a log (the router logs every request here).
    logs = "".join(p.log_path.read_text(errors="replace") for p in stack.processes)
    assert "POST /v1/chat/completions 401" in keys_router.process.log_tail(10**6)  # requests are logged
    for secret in (*KEYS, FILE_KEY, NEW_FILE_KEY, "sk-wrong"):
        assert secret not in logs, f"{secret} was logged"
    t.figures.update({"keys in logs": 0, "401 bodies for different wrong keys": len(bodies)})


async def test_limits_per_request_and_per_key(stack, keys_router, tally):
    t = tally("security: limits (prompt tokens, max_tokens, body size, concurrent streams per key)")
    async with aiohttp.ClientSession() as s:
        long_prompt = chat_body(3, 4, stream=False)
        long_prompt["messages"][0]["content"] = "word " * 400
        status, body, _ = await raw_chat(s, keys_router, KEYS[0], long_prompt)
        assert (status, body["error"]["code"]) == (400, "prompt_too_long"), body
        status, body, _ = await raw_chat(s, keys_router, KEYS[0], chat_body(3, MAX_TOKENS + 1, stream=False))
        assert (status, body["error"]["code"]) == (400, "max_tokens_exceeded"), body
        no_max = chat_body(3, 1, stream=False)
        del no_max["max_tokens"]
        status, body, _ = await raw_chat(s, keys_router, KEYS[0], no_max)
        assert status == 200 and body["usage"]["completion_tokens"] == MAX_TOKENS, body  # capped at the limit
        huge = json.dumps({**chat_body(3, 4), "user": "x" * (2 << 20)}).encode()
        async with s.post(
            keys_router.url + "/v1/chat/completions",
            data=huge,
            headers={**headers(KEYS[0]), "Content-Type": "application/json"},
        ) as r:
            body = json.loads(await r.read())
            assert r.status == 413 and "1048576 bytes" in body["error"]["message"], body
        t.extend([Outcome("error", 400), Outcome("error", 400), Outcome("ok", 200), Outcome("error", 413)])
        # Two streams in flight per key: a third for the same key is a 429 with Retry-After; another
        # key is not affected; once a stream ends the key may open one again.
        first = [
            asyncio.create_task(chat(s, keys_router, KEYS[0], chat_body(10 + i, MAX_TOKENS)))
            for i in range(2)
        ]
        await asyncio.sleep(0.3)
        asked = asyncio.get_running_loop().time()
        status, body, hdrs = await raw_chat(s, keys_router, KEYS[0], chat_body(20, 2, stream=False))
        refused_ms = (asyncio.get_running_loop().time() - asked) * 1000
        assert status == 429 and hdrs.get("Retry-After") and "concurrent" in body["error"]["message"], body
        t.add(Outcome("error", 429))
        other = await chat(s, keys_router, KEYS[1], chat_body(21, 2, stream=False))
        assert other.kind == "ok", other
        outcomes = await asyncio.gather(*first)
        assert all(o.kind == "ok" for o in outcomes), outcomes
        again = await chat(s, keys_router, KEYS[0], chat_body(22, 2, stream=False))
        assert again.kind == "ok", again
        t.extend([*outcomes, other, again])
        t.figures["429 answered in ms"] = f"{refused_ms:.1f}"


async def cached_tokens(s, url: str, key: str | None, user: str, salt: str | None = None) -> int:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "max_tokens": 1,
        "temperature": 0,
    }
    if salt is not None:
        body["cache_salt"] = salt
    async with s.post(url + "/v1/chat/completions", json=body, headers=headers(key)) as r:
        answer = json.loads(await r.read())
        assert r.status == 200, answer
        return (answer["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)


async def test_prefix_cache_isolation(stack, keys_router, tally):
    """Tenants never hit each other's cached blocks (so no timing probe can tell what another cached);
    one tenant's repeats do hit."""
    t = tally("security: prefix-cache isolation (per-key salts and cache_salt)")
    plain = stack.routers[0]
    async with aiohttp.ClientSession() as s:
        # Per-key salts: the same prompt, first under key A, then key B.
        a1 = await cached_tokens(s, keys_router.url, KEYS[0], "isolation 1")
        a2 = await cached_tokens(s, keys_router.url, KEYS[0], "isolation 1")
        b1 = await cached_tokens(s, keys_router.url, KEYS[1], "isolation 1")
        b2 = await cached_tokens(s, keys_router.url, KEYS[1], "isolation 1")
        a_salted = await cached_tokens(s, keys_router.url, KEYS[0], "isolation 1", salt="team-x")
        # Without keys: the request's own cache_salt.
        s1 = await cached_tokens(s, plain.url, None, "isolation 2", salt="tenant-1")
        s2 = await cached_tokens(s, plain.url, None, "isolation 2", salt="tenant-2")
        s3 = await cached_tokens(s, plain.url, None, "isolation 2", salt="tenant-1")
        s4 = await cached_tokens(s, plain.url, None, "isolation 2")
    assert a1 == 0 and a2 >= 32, (a1, a2)  # the same key hits its own blocks
    assert b1 == 0 and b2 >= 32, (b1, b2)  # another key does not, until it cached them itself
    assert a_salted == 0
    assert (s1, s2, s4) == (0, 0, 0) and s3 >= 32, (s1, s2, s3, s4)
    t.extend([Outcome("ok", 200)] * 9)
    t.figures.update(
        {
            "cached tokens for key A, A, B, B, A with a salt": f"{a1}, {a2}, {b1}, {b2}, {a_salted}",
            "cached tokens for salts t1, t2, t1, none": f"{s1}, {s2}, {s3}, {s4}",
        }
    )


# ---- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_stack(tiny_model_dir, tmp_path_factory):
    """Tokenizer and one engine serving mutual TLS with a certificate that names only `pagoda-grpc`; a
    router that dials them by IP (so it must check that name) and serves HTTPS itself."""
    pytest.importorskip("cryptography")
    from reliability_certs import Authority

    folder = tmp_path_factory.mktemp("certs")
    ca, stranger = Authority(folder, "pagoda-test-ca"), Authority(folder, "stranger-ca")
    server = ca.issue("grpc-server", dns=("pagoda-grpc",))
    client = ca.issue("router-client", client=True, server=False)
    https = ca.issue("router-https", dns=("localhost",), ips=("127.0.0.1",))
    tls = Tls(ca.cert, server.cert, server.key, client.cert, client.key, server_name="pagoda-grpc")
    stack = Stack(tiny_model_dir, tmp_path_factory.mktemp("tls-logs"), num_engines=1, tls=tls)
    trust = ssl.create_default_context(cafile=str(ca.cert))
    stack.start_router("--tls-cert", str(https.cert), "--tls-key", str(https.key), client_ssl=trust)
    stack.certs = {
        "ca": ca,
        "stranger": stranger.issue("intruder", client=True, server=False),
        "client": client,
    }
    yield stack
    stack.stop()


async def test_tls_end_to_end(tls_stack, tally):
    t = tally("security: HTTPS router, mutual TLS to engine and tokenizer (certificates made in the test)")
    router = tls_stack.routers[0]
    async with aiohttp.ClientSession() as s:
        for i in range(4):  # chat needs the tokenizer and the engine, both over mutual TLS
            t.add(o := await post(s, router.url + "/v1/chat/completions", chat_body(i, 4), ssl=router.ssl))
            assert o.kind == "ok", o
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a client that does not trust the CA
            await s.get(router.url + "/health")
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port
            await s.get(router.url.replace("https:", "http:") + "/health")


def refused(target: str, credentials: grpc.ChannelCredentials | None, options=()) -> bool:
    """Whether the engine refuses a GetServerInfo over this channel."""
    channel = (
        grpc.secure_channel(target, credentials, options=list(options))
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        try:
            engine_pb2_grpc.EngineServiceStub(channel).GetServerInfo(
                engine_pb2.GetServerInfoRequest(), timeout=3
            )
        except grpc.RpcError as err:
            return err.code() is grpc.StatusCode.UNAVAILABLE
    return False


def test_engine_refuses_clients_without_a_trusted_certificate(tls_stack, tally):
    t = tally("security: engine mutual TLS refuses plaintext, no certificate, a stranger's certificate")
    target, certs = tls_stack.addresses[0], tls_stack.certs
    ca = certs["ca"].cert.read_bytes()
    name = [("grpc.ssl_target_name_override", "pagoda-grpc")]
    own = grpc.ssl_channel_credentials(
        ca, certs["client"].key.read_bytes(), certs["client"].cert.read_bytes()
    )
    assert not refused(target, own, name)  # the router's own certificate works
    stranger = grpc.ssl_channel_credentials(
        ca, certs["stranger"].key.read_bytes(), certs["stranger"].cert.read_bytes()
    )
    cases = {
        "plaintext": (None, ()),
        "no client certificate": (grpc.ssl_channel_credentials(ca), name),
        "a stranger CA's certificate": (stranger, name),
        "the wrong server name": (own, [("grpc.ssl_target_name_override", "someone-else")]),
    }
    for what, (credentials, options) in cases.items():
        assert refused(target, credentials, options), what
        t.add(Outcome("error", None, what))
    # Kubelet's probe port speaks plaintext and carries health alone.
    with grpc.insecure_channel(f"127.0.0.1:{tls_stack.health_ports[0]}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            engine_pb2_grpc.EngineServiceStub(channel).GetServerInfo(
                engine_pb2.GetServerInfoRequest(), timeout=3
            )
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    t.figures["refused"] = ", ".join(cases)


# ---- the gRPC ports (issue 25, break 8) ---------------------------------------------------------------

ROUTER_TOKEN, OTHER_TOKEN = "grpc-token-router-0123456789", "grpc-token-other-9876543210"


@pytest.fixture(scope="module")
def token_stack(tiny_model_dir, tmp_path_factory):
    """A tokenizer and one engine that take only callers with a token of theirs (two: the router's and
    another client's), and a router that sends its own."""
    folder = tmp_path_factory.mktemp("grpc-tokens")
    accepted, router_token = folder / "accepted", folder / "router"
    accepted.write_text(f"# one a line\n{ROUTER_TOKEN}\n{OTHER_TOKEN}\n")
    router_token.write_text(f"{ROUTER_TOKEN}\n")
    stack = Stack(
        tiny_model_dir,
        tmp_path_factory.mktemp("token-logs"),
        num_engines=1,
        accepted_tokens=accepted,
        router_token=router_token,
    )
    stack.start_router()
    yield stack
    stack.stop()


def call(method, request, token: str | None = None, **kw):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return method(request, timeout=10, metadata=metadata, **kw)


def test_grpc_ports_need_the_token(token_stack, tally):
    t = tally("security: engine and tokenizer gRPC need the shared token (none, wrong: UNAUTHENTICATED)")
    engine, tokenizer = token_stack.addresses[0], f"127.0.0.1:{token_stack.tokenizer_port}"
    router = token_stack.routers[0]
    import urllib.request

    body = json.dumps(chat_body(1, 4, stream=False)).encode()
    request = urllib.request.Request(
        router.url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:  # the router has the token
        assert r.status == 200
    t.add(Outcome("ok", 200))
    ids = engine_pb2.TokenIds(ids=[5, 6, 7])
    generate = engine_pb2.GenerateRequest(
        prompt_token_ids=ids, sampling_params=engine_pb2.SamplingParams(max_tokens=2)
    )
    with grpc.insecure_channel(engine) as e_channel, grpc.insecure_channel(tokenizer) as t_channel:
        e, tok = (
            engine_pb2_grpc.EngineServiceStub(e_channel),
            tokenizer_pb2_grpc.TokenizerServiceStub(t_channel),
        )
        for token in (None, "wrong-token", ROUTER_TOKEN[:-1]):
            for what, attempt in {
                "Generate": lambda tk=token: list(call(e.Generate, generate, tk)),
                "GetServerInfo": lambda tk=token: call(
                    e.GetServerInfo, engine_pb2.GetServerInfoRequest(), tk
                ),
                "Abort": lambda tk=token: call(e.Abort, engine_pb2.AbortRequest(request_id="x"), tk),
                "Encode": lambda tk=token: call(tok.Encode, tokenizer_pb2.EncodeRequest(text="hi"), tk),
            }.items():
                with pytest.raises(grpc.RpcError) as err:
                    attempt()
                assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, (what, token, err.value)
                t.add(Outcome("error", None, f"{what} UNAUTHENTICATED"))
        # Health stays open: kubelet's probes carry no token.
        answer = health_pb2_grpc.HealthStub(e_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # With a token: served.
        assert len(list(call(e.Generate, generate, OTHER_TOKEN))) >= 1
        assert call(tok.Encode, tokenizer_pb2.EncodeRequest(text="hi"), OTHER_TOKEN).num_tokens
        t.extend([Outcome("ok"), Outcome("ok")])
    t.figures["refused"] = (
        "no token, a wrong token, a token one character short (Generate, GetServerInfo, Abort, Encode)"
    )


def test_abort_is_for_the_requests_own_caller(token_stack, stack, tally):
    """A token holder cannot abort another's requests, nor can a stranger on a service without tokens."""
    t = tally("security: Abort from another caller (another token, another connection) finds nothing")
    long = engine_pb2.SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)
    cases = [
        (token_stack.addresses[0], ROUTER_TOKEN, OTHER_TOKEN),  # tokens
        (stack.addresses[0], None, None),  # no tokens: the connection is the caller
    ]
    for target, owner, stranger in cases:
        own = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        other = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        with own, other:
            mine, theirs = engine_pb2_grpc.EngineServiceStub(own), engine_pb2_grpc.EngineServiceStub(other)
            rid = f"victim-{owner is None}"
            request = engine_pb2.GenerateRequest(
                request_id=rid, prompt_token_ids=engine_pb2.TokenIds(ids=[5, 6, 7]), sampling_params=long
            )
            stream = call(mine.Generate, request, owner)
            next(stream)
            assert not call(theirs.Abort, engine_pb2.AbortRequest(request_id=rid), stranger).found
            assert next(stream).token_ids  # still streaming
            assert call(mine.Abort, engine_pb2.AbortRequest(request_id=rid), owner).found
            assert list(stream)[-1].finish_reason == engine_pb2.FINISH_REASON_ABORT
        t.extend([Outcome("error", None, "stranger's Abort: found=false"), Outcome("ok", None, "own Abort")])


def test_api_key_from_the_environment_is_not_on_the_command_line(stack, tally):
    t = tally("security: router API key from PAGODA_API_KEY (not in ps), refused without it")
    key = "sk-from-the-environment-42"
    router = stack.start_router(env={"PAGODA_API_KEY": key})
    try:
        import urllib.error
        import urllib.request

        body = json.dumps(chat_body(2, 2, stream=False)).encode()
        for sent, expected in ((None, 401), (key, 200)):
            headers = {
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {sent}"} if sent else {}),
            }
            request = urllib.request.Request(router.url + "/v1/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    status = r.status
            except urllib.error.HTTPError as err:
                status = err.code
            assert status == expected, (sent, status)
            t.add(Outcome("ok" if status == 200 else "error", status))
        cmdline = open(f"/proc/{router.process.popen.pid}/cmdline", "rb").read()
        assert key.encode() not in cmdline
        assert key not in router.process.log_tail(10**6)
    finally:
        router.process.stop()
        stack.routers.remove(router)


def test_standalone_services_listen_on_loopback_unless_told(tiny_model_dir, tmp_path):
    """Issue 25, break 8: `pagoda engine` and `pagoda tokenizer` without --host listened on 0.0.0.0, so
    anyone who could reach the machine could generate text or abort others' requests. Now they listen on
    127.0.0.1 alone unless given --host (the chart passes --host 0.0.0.0)."""
    import psutil

    from tests.router.router_processes import Process, free_port, wait_until

    ports = {"engine": free_port(), "tokenizer": free_port(), "told": free_port()}
    common = ["--model", str(tiny_model_dir), "--metrics-port", "0"]
    processes = {
        "engine": Process(
            ["engine", *common, "--device", "cpu", "--port", str(ports["engine"])], tmp_path, "engine"
        ),
        "tokenizer": Process(
            ["tokenizer", *common, "--port", str(ports["tokenizer"])], tmp_path, "tokenizer"
        ),
        "told": Process(
            ["tokenizer", *common, "--port", str(ports["told"]), "--host", "0.0.0.0"], tmp_path, "told"
        ),
    }
    try:

        def listening(name: str) -> set[str]:
            connections = psutil.Process(processes[name].popen.pid).net_connections(kind="tcp")
            # gRPC may bind an IPv6 socket: 127.0.0.1 then shows as ::ffff:127.0.0.1.
            ips = {c.laddr.ip for c in connections if c.status == "LISTEN" and c.laddr.port == ports[name]}
            return {ip.removeprefix("::ffff:") for ip in ips}

        for name in processes:
            wait_until(lambda n=name: listening(n), 120, f"{name} to listen", list(processes.values()))
        assert listening("engine") == {"127.0.0.1"}
        assert listening("tokenizer") == {"127.0.0.1"}
        assert listening("told") & {"0.0.0.0", "::"}
    finally:
        for p in processes.values():
            p.stop()
