"""Fuzzing: the router's HTTP API from its OpenAPI description, and the engine's gRPC `Generate`.

HTTP: a real router process in front of the scripted tokenizer and engine (their own process, answers in
microseconds). Hypothesis draws bodies that fit router/openapi.yaml and mutations that break it; every
answer must be a 200 that fits the description (each event of a stream too) or a 4xx in OpenAI's error
format; never a 5xx, and the router is still healthy afterwards.

gRPC: hypothesis draws `GenerateRequest`s (every sampling field, in and out of range, NaN, huge, empty)
and bytes that are no message at all, and sends them straight to an engine service: each is either
served or refused with INVALID_ARGUMENT, never another status; the engine still serves afterwards.
"""

from __future__ import annotations

import functools
import http.client
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis")  # the GPU machine may lack it; CI installs it
import reliability_openapi as spec  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reliability_client import Outcome, judge, judge_response_events  # noqa: E402

from pagoda.engine.v1 import engine_pb2 as pb  # noqa: E402
from tests.router.router_processes import Process, free_port, http_json, wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
FUZZED = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize"]


@pytest.fixture(scope="module")
def fuzz_router(tmp_path_factory):
    """A router process in front of the scripted backend process; yields its port."""
    backend = subprocess.Popen(
        [sys.executable, str(HERE / "scripted_backend.py")], stdout=subprocess.PIPE, text=True
    )
    tokenizer_port, engine_port = map(int, backend.stdout.readline().split())
    port = free_port()
    args = ["router", "--host", "127.0.0.1", "--port", str(port), "--health-interval", "0.5"]
    args += ["--tokenizer", f"127.0.0.1:{tokenizer_port}", "--engine", f"127.0.0.1:{engine_port}"]
    router = Process(args, tmp_path_factory.mktemp("fuzz-logs"), "fuzz-router")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_json(url + "/health")[0] == 200, 30, "the fuzzed router", [router])
    yield port
    router.stop()
    backend.terminate()
    backend.wait(10)


class Client:
    """One keep-alive HTTP connection; a broken connection is reopened (and the case counted lost)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: object) -> tuple[int, str, bytes, dict]:
        try:
            self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read(), dict(r.getheaders())
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise


def test_openapi_describes_every_route():
    from router.app import build_app
    from router.config import RouterConfig

    served = {
        (r.resource.canonical, r.method.lower())
        for r in build_app(RouterConfig(metrics=True)).router.routes()
        if r.method != "HEAD"
    }
    described = {(path, method) for path, ops in spec.OPENAPI["paths"].items() for method in ops}
    assert served == described


def test_openapi_fuzz(fuzz_router, scale, tally):
    t = tally(
        f"bad input: router API fuzzed from router/openapi.yaml (hypothesis, {scale.http_fuzz_cases} cases)"
    )
    spec.FIXED["Model"] = st.just("scripted")
    spec.FIXED["TokenId"] = st.integers(0, 258) | st.integers(0, 2**32 - 1)  # the scripted vocabulary: 259
    client = Client(fuzz_router)
    checks = {
        (path, kind): spec.response_validator(path, kind)
        for path in FUZZED
        for kind in ("application/json", "text/event-stream")
        if kind in spec.OPENAPI["paths"][path]["post"]["responses"]["200"]["content"]
    }
    error_check = spec.error_validator()

    def valid_or_mutated(path: str):
        valid = spec.strategy(spec.request_schema(path))
        return st.tuples(st.just(path), st.one_of(valid, spec.mutated(valid)))

    def problem(path: str, kind: str, body: object) -> str | None:
        error = next(checks[(path, kind)].iter_errors(body), None)
        return None if error is None else f"does not fit the description: {error.message[:200]}"

    @settings(
        max_examples=scale.http_fuzz_cases,
        deadline=None,
        database=None,
        derandomize=scale.mode == "cpu",  # CI runs the same cases every time
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.sampled_from(FUZZED).flatmap(valid_or_mutated))
    def one(case):
        path, body = case
        try:
            status, content_type, raw, headers = client.post(path, body)
        except (OSError, http.client.HTTPException) as err:
            outcome = t.add(Outcome("lost", None, f"connection: {err}"))
        else:
            on_event = lambda e: problem(path, "text/event-stream", e)  # noqa: E731
            if path == "/v1/responses":
                outcome = t.add(judge_response_events(status, content_type, raw, headers))
            else:
                outcome = t.add(
                    judge(status, content_type, raw, headers, on_event, choices=path.startswith("/v1/"))
                )
            if outcome.kind == "ok" and not content_type.startswith("text/event-stream"):
                found = problem(path, "application/json", json.loads(raw))
                if found:
                    outcome.kind, outcome.detail = "lost", found
            if outcome.kind == "error" and status != 200:
                assert 400 <= status < 500, (status, raw[:300])
                error = next(error_check.iter_errors(json.loads(raw)), None)
                assert error is None, (status, raw[:300])
        assert outcome.kind in ("ok", "error"), (path, body, outcome)

    one()
    alive = http_json(f"http://127.0.0.1:{fuzz_router}/health")
    assert alive[0] == 200, alive
    c = t.counts
    t.figures.update({"200s": c["ok"], "4xx": c["error"], "router healthy after": "yes"})
    assert c["ok"] > len(t.outcomes) // 10, t.summary()  # the valid half mostly gets served


# ---- gRPC ---------------------------------------------------------------------------------------------

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, -1.0, 1e30])
_U32 = st.integers(0, 2**32 - 1)
_I32 = st.integers(-(2**31), 2**31 - 1)

# field -> (plausible values, absurd ones)
_FIELDS = {
    "n": (st.integers(1, 3), _U32),
    "max_tokens": (st.integers(1, 8), _U32),
    "min_tokens": (st.integers(0, 4), _U32),
    "temperature": (st.floats(0, 2, width=32), _FLOATS),
    "top_p": (st.floats(0.125, 1, width=32), _FLOATS),
    "top_k": (st.integers(-1, 50), _I32),
    "min_p": (st.floats(0, 1, width=32), _FLOATS),
    "presence_penalty": (st.floats(-2, 2, width=32), _FLOATS),
    "frequency_penalty": (st.floats(-2, 2, width=32), _FLOATS),
    "repetition_penalty": (st.floats(0.5, 2, width=32), _FLOATS),
    "seed": (st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),  # int64: all served
    "logprobs": (st.integers(0, 5), _U32),
    "prompt_logprobs": (st.integers(0, 5), _U32),
    "ignore_eos": (st.booleans(), st.booleans()),
    "skip_special_tokens": (st.booleans(), st.booleans()),
    "include_stop_str_in_output": (st.booleans(), st.booleans()),
}


@st.composite
def generate_requests(draw) -> pb.GenerateRequest:
    """Every field of GenerateRequest: a request is plausible (each field in range; often served) or
    absurd (each field in range or anything its type holds: NaN, infinities, 2^32 - 1, 600-token
    prompts, ids past the vocabulary, empty stop strings, 300-character request ids)."""
    absurd = draw(st.booleans())

    def pick(plausible, wild):
        return draw(plausible | wild) if absurd else draw(plausible)

    token = st.integers(0, 49151)
    params = {}
    for name, (plausible, wild) in _FIELDS.items():
        if draw(st.booleans()) and (absurd or not plausible.is_empty):
            params[name] = pick(plausible, wild)
    params["logit_bias"] = pick(st.dictionaries(token, st.floats(-100, 100, width=32), max_size=3),
                                st.dictionaries(_U32, _FLOATS, max_size=3))  # fmt: skip
    params["stop_token_ids"] = pick(st.lists(token, max_size=3), st.lists(_U32, max_size=3))
    params["stop"] = pick(
        st.lists(st.text(min_size=1, max_size=4), max_size=3), st.lists(st.text(max_size=4))
    )
    request = pb.GenerateRequest(
        request_id=pick(st.text(max_size=16), st.text(max_size=300)),
        sampling_params=pb.SamplingParams(**params),
        cache_salt=draw(st.text(max_size=16)),
    )
    prompt = pick(st.sampled_from(["ids", "text"]), st.just("none"))
    if prompt == "ids":
        ids = pick(st.lists(token, min_size=1, max_size=8), st.lists(_U32, min_size=600) | st.just([]))
        request.prompt_token_ids.ids.extend(ids)
    elif prompt == "text":
        request.text = pick(st.text(min_size=1, max_size=40), st.just(""))
    return request


@pytest.fixture(scope="module")
def fuzzed_engine(tiny_model_dir):
    from tests.engine_service.server_thread import ServerThread, tiny_config

    with ServerThread(tiny_config(tiny_model_dir, max_model_len=512), engine_core="thread") as server:
        yield server


def test_generate_fuzz(fuzzed_engine, scale, tally):
    t = tally(f"bad input: engine gRPC Generate fuzzed (hypothesis, {scale.grpc_fuzz_cases} requests)")
    stub = fuzzed_engine.stub
    # Raw bytes, so that messages that are not even protobuf get through too.
    generate = fuzzed_engine.channel.unary_stream("/pagoda.engine.v1.EngineService/Generate")
    codes: dict[str, int] = {}
    wire = generate_requests().map(pb.GenerateRequest.SerializeToString) | st.binary(min_size=1, max_size=48)

    @settings(
        max_examples=scale.grpc_fuzz_cases,
        deadline=None,
        database=None,
        derandomize=scale.mode == "cpu",
        suppress_health_check=list(HealthCheck),
    )
    @given(request=wire)
    def one(request: bytes):
        call = generate(request, timeout=30)
        try:
            next(call)  # validation happens before the first message; the rest would only take time
            outcome = Outcome("ok")
        except StopIteration:
            outcome = Outcome("lost", detail="a stream with no message")
        except grpc.RpcError as err:
            code = err.code()
            codes[code.name] = codes.get(code.name, 0) + 1
            proper = code is grpc.StatusCode.INVALID_ARGUMENT
            outcome = Outcome("error" if proper else "lost", None, f"{code.name}: {err.details()}")
        finally:
            call.cancel()
        t.add(outcome)
        assert outcome.kind in ("ok", "error"), (request, outcome)

    one()
    ids, params = pb.TokenIds(ids=[5, 6, 7]), pb.SamplingParams(max_tokens=2)
    last = list(stub.Generate(pb.GenerateRequest(prompt_token_ids=ids, sampling_params=params), timeout=30))
    assert sum(len(m.token_ids) for m in last) == 2, "the engine stopped serving"
    t.figures.update({"refused": ", ".join(f"{n} {code}" for code, n in codes.items()) or "none"})
    t.figures["served after"] = "yes"


# ---- the tokenizer's gRPC API ---------------------------------------------------------------------------

# Templates from harmless to hostile (issue 25): errors, loops, huge numbers, huge strings, huge lists.
_TEMPLATES = st.sampled_from(
    [
        "{{ messages[0].content }}",
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}",
        "{{ 1/0 }}",
        "{{ raise_exception('no') }}",
        "{{ messages[99].content }}",
        "{{ (7 ** 30000000) % 10 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'a' * 10**10 }}",
        "{% set x = ['a'] * 10**8 %}{{ x | length }}",
        "{{ foo.bar.baz }}",
        "{% for %}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    ]
)
_TOKENIZER_PROPER = {"OK", "INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION"}


@st.composite
def tokenizer_requests(draw) -> tuple[str, bytes]:
    """(method, request bytes): Encode (text or chat: messages, roles, template kwargs, a template, a
    token limit), Decode (ids in and out of the vocabulary), or bytes that are no message."""
    from pagoda.tokenizer.v1 import tokenizer_pb2 as tpb

    kind = draw(st.sampled_from(["text", "chat", "decode", "garbage"]))
    if kind == "garbage":
        return draw(st.sampled_from(["Encode", "Decode", "Info"])), draw(st.binary(min_size=1, max_size=48))
    if kind == "decode":
        ids = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 49151), max_size=20))
        return "Decode", tpb.DecodeRequest(token_ids=ids).SerializeToString()
    request = tpb.EncodeRequest()
    if draw(st.booleans()):
        request.max_tokens = draw(st.integers(0, 2**32 - 1) | st.integers(0, 64))
    if draw(st.booleans()):
        request.add_special_tokens = draw(st.booleans())
    if kind == "text":
        request.text = draw(st.text(max_size=200) | st.just("lorem ipsum " * 20_000))
        return "Encode", request.SerializeToString()
    messages = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["user", "assistant", "system", "tool", "", "x"]), st.text(max_size=40)
            ),
            max_size=4,
        )
    )
    request.chat.messages.extend(tpb.ChatMessage(role=r, content=c) for r, c in messages)
    if draw(st.booleans()):
        request.chat.chat_template = draw(_TEMPLATES | st.text(max_size=30))
    if draw(st.booleans()):
        request.chat.chat_template_kwargs_json = draw(
            st.sampled_from(['{"a": 1}', "[1]", "{oops", '{"tokenize": true}', '{"messages": []}', ""])
        )
    if draw(st.booleans()):
        request.chat.add_generation_prompt = draw(st.booleans())
    request.chat.continue_final_message = draw(st.booleans())
    return "Encode", request.SerializeToString()


@pytest.fixture(scope="module")
def fuzzed_tokenizer(tiny_model_dir):
    from tests.tokenizer_service.conftest import ServerThread, config_for

    config = config_for(
        tiny_model_dir,
        workers=2,
        trust_request_chat_template=True,
        template_workers=2,
        template_timeout_s=1.0,
    )
    with ServerThread(config) as server:
        yield server


def test_tokenizer_fuzz(fuzzed_tokenizer, scale, tally):
    t = tally(
        "bad input: tokenizer gRPC fuzzed, request templates allowed "
        f"(hypothesis, {scale.tokenizer_fuzz_cases} requests)"
    )
    channel = fuzzed_tokenizer.channel()
    methods = {
        name: channel.unary_unary(f"/pagoda.tokenizer.v1.TokenizerService/{name}")
        for name in ("Encode", "Decode", "Info")
    }
    codes: dict[str, int] = {}

    @settings(
        max_examples=scale.tokenizer_fuzz_cases,
        deadline=None,
        database=None,
        derandomize=scale.mode == "cpu",
        suppress_health_check=list(HealthCheck),
    )
    @given(case=tokenizer_requests())
    def one(case):
        method, request = case
        try:
            methods[method](request, timeout=60)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
            detail = err.details()
        codes[code] = codes.get(code, 0) + 1
        outcome = Outcome(
            "ok" if code == "OK" else "error" if code in _TOKENIZER_PROPER else "lost", None, code
        )
        t.add(outcome)
        assert outcome.kind in ("ok", "error"), (method, request[:200], code, detail)

    one()
    from pagoda.tokenizer.v1 import tokenizer_pb2 as tpb

    hello = methods["Encode"](tpb.EncodeRequest(text="hello").SerializeToString(), timeout=10)
    assert tpb.EncodeResponse.FromString(hello).num_tokens >= 1, "the tokenizer stopped serving"
    channel.close()
    t.figures.update(
        {"codes": ", ".join(f"{n} {c}" for c, n in sorted(codes.items())), "served after": "yes"}
    )


# ---- the HTTP envelope: encodings, types, lengths ----------------------------------------------------------


@functools.cache
def _bomb() -> bytes:
    """70 MB of spaces in about 70 KB of gzip: past the router's body limit once inflated."""
    import gzip

    return gzip.compress(b" " * (70 << 20), compresslevel=9)


@st.composite
def envelopes(draw) -> tuple[str, bytes, dict]:
    """A valid or broken body under odd headers: Content-Encoding (right, wrong, unknown, a bomb),
    Content-Type, Expect; each must be answered 2xx or 4xx, never 5xx."""
    import gzip
    import zlib

    path = draw(st.sampled_from(FUZZED))
    body = json.dumps({"model": "scripted", "prompt": "hi", "max_tokens": 2}).encode()
    body = draw(st.just(body) | st.binary(max_size=64) | st.just(b"[" * 5000))
    encoding = draw(
        st.sampled_from(["gzip", "deflate", "identity", "br", "gzip, gzip", "x-gzip", "", "zstd"])
    )
    packed = draw(st.sampled_from(["right", "raw", "bomb", "truncated"]))
    if packed == "right" and encoding in ("gzip", "x-gzip"):
        body = gzip.compress(body)
    elif packed == "right" and encoding == "deflate":
        body = zlib.compress(body)
    elif packed == "bomb":
        body = _bomb()
    elif packed == "truncated":
        body = gzip.compress(body)[:-5]
    headers = {
        "Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "application/x+json"]))
    }
    if encoding:
        headers["Content-Encoding"] = encoding
    if draw(st.booleans()):
        headers["Expect"] = draw(st.sampled_from(["100-continue", "something-else"]))
    return path, body, headers


def test_http_envelope_fuzz(fuzz_router, scale, tally):
    t = tally(
        "bad input: HTTP bodies under odd encodings, types and Expect "
        f"(hypothesis, {scale.envelope_fuzz_cases} cases)"
    )
    statuses: dict[int, int] = {}

    @settings(
        max_examples=scale.envelope_fuzz_cases,
        deadline=None,
        database=None,
        derandomize=scale.mode == "cpu",
        suppress_health_check=list(HealthCheck),
    )
    @given(case=envelopes())
    def one(case):
        path, body, headers = case
        conn = http.client.HTTPConnection("127.0.0.1", fuzz_router, timeout=60)
        try:
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        outcome = t.add(
            judge(r.status, r.getheader("Content-Type", ""), raw, dict(r.getheaders()), choices=False)
        )
        assert r.status < 500, (path, headers, body[:100], r.status, raw[:300])
        assert outcome.kind in ("ok", "error"), (path, headers, outcome)

    one()
    alive = http_json(f"http://127.0.0.1:{fuzz_router}/health")
    assert alive[0] == 200, alive
    t.figures.update(
        {
            "statuses": ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
            "router healthy after": "yes",
        }
    )
