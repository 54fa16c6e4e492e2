"""End to end with real processes on loopback: `pagoda tokenizer`, two `pagoda engine`s (a tiny random Llama
made here with transformers, CPU, float32) and `pagoda router`, driven by the openai SDK."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from router_processes import Process, engine_info, engine_ready, free_port, http_json, http_text, wait_until

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


class Cluster:
    def __init__(self, model_dir, log_dir):
        self.tokenizer_port, self.router_port = free_port(), free_port()
        self.engine_addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        self.tokenizer = Process(
            [
                "tokenizer",
                "--model",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.tokenizer_port),
                "--metrics-port",
                "0",
                "--workers",
                "1",
            ],
            log_dir,
            "tokenizer",
        )
        self.engines = [
            Process(
                [
                    "engine",
                    "--model",
                    str(model_dir),
                    "--served-model-name",
                    MODEL,
                    "--device",
                    "cpu",
                    "--dtype",
                    "float32",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    address.rsplit(":", 1)[1],
                    "--metrics-port",
                    "0",
                    "--max-model-len",
                    "512",
                    "--num-kv-blocks",
                    "256",
                    "--max-num-seqs",
                    "32",
                    "--block-size",
                    "16",
                ],
                log_dir,
                f"engine{i}",
            )
            for i, address in enumerate(self.engine_addresses)
        ]
        engine_flags = [flag for a in self.engine_addresses for flag in ("--engine", a)]
        self.router = Process(
            [
                "router",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.router_port),
                "--tokenizer",
                f"127.0.0.1:{self.tokenizer_port}",
                *engine_flags,
            ],
            log_dir,
            "router",
        )
        self.processes = [self.tokenizer, *self.engines, self.router]
        self.url = f"http://127.0.0.1:{self.router_port}"
        for address in self.engine_addresses:
            wait_until(lambda a=address: engine_ready(a), 120, f"engine {address}", self.processes)
        wait_until(lambda: self.engines_ready() == 2, 30, "the router to see both engines", self.processes)

    def engines_ready(self) -> int:
        return http_json(self.url + "/health")[1]["engines_ready"]

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)

    def engine_requests(self) -> dict[str, float]:
        """Requests the router sent to each engine, from its /metrics."""
        pattern = r'pagoda_router_engine_requests_total\{engine="([^"]+)"\} ([0-9.e+]+)'
        return {a: float(v) for a, v in re.findall(pattern, http_text(self.url + "/metrics"))}

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    c = Cluster(tiny_model_dir, tmp_path_factory.mktemp("logs"))
    yield c
    c.stop()


MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_and_completions_through_the_real_stack(cluster):
    client = cluster.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, temperature=0)
    prompt_len = http_json_post(cluster.url + "/tokenize", {"model": MODEL, "messages": MSGS})["count"]
    assert r.usage.prompt_tokens == prompt_len and r.usage.completion_tokens <= 8
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.role == "assistant"
    # Streaming gives the same greedy text, with exact usage at the end.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # max_tokens with EOS ignored always ends in "length".
    r = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_n_logprobs_seed_and_stop(cluster):
    client = cluster.client()
    r = client.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=6,
        n=2,
        logprobs=True,
        top_logprobs=2,
        temperature=1.0,
        seed=123,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 12
    for c in r.choices:
        assert len(c.logprobs.content) == 6 and all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
    # The same seed gives the same samples, whichever engine serves it (both load the same weights).
    again = client.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=6,
        n=2,
        temperature=1.0,
        seed=123,
        extra_body={"ignore_eos": True},
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    # A stop string taken from the greedy output ends the text right before it.
    greedy = (
        client.completions.create(
            model=MODEL, prompt="The", max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = greedy[len(greedy) // 2 :][:3]
    if stop.strip():
        cut = client.completions.create(
            model=MODEL,
            prompt="The",
            max_tokens=12,
            temperature=0,
            stop=[stop],
            extra_body={"ignore_eos": True},
        ).choices[0]
        assert cut.finish_reason == "stop" and cut.text == greedy[: greedy.find(stop)]


def test_seeds_of_the_whole_int64_range_draw_as_offline(cluster, tiny_model_dir):
    """A seed means the same through the router as in the offline API: -1, 2^63 - 1 and -2^63 included."""
    from engine_service import LLM, SamplingParams

    llm = LLM(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=512, num_kv_blocks=256)
    client, prompt = cluster.client(), [17, 230, 1024, 5]
    texts = {}
    for seed in (-1, 2**63 - 1, -(2**63)):
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=seed, ignore_eos=True)
        offline = llm.generate(prompt_token_ids=[prompt], sampling_params=params)[0].outputs[0].text
        online = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=8,
            temperature=1.0,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        texts[seed] = online.choices[0].text
        assert texts[seed] == offline and offline, seed
    assert texts[-1] != texts[-(2**63)]


def test_traffic_spreads_and_prefixes_stick(cluster):
    client = cluster.client()
    before = cluster.engine_requests()
    for i in range(16):
        system = f"{i:02d} You are assistant number {i}. " * 4
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": system}, *MSGS], max_tokens=1
        )
    after = cluster.engine_requests()
    spread = [after.get(a, 0) - before.get(a, 0) for a in cluster.engine_addresses]
    assert sum(spread) == 16 and min(spread) >= 3, spread
    # A shared system prompt longer than the 8 blocks affinity hashes: every request lands on one engine
    # and finds the prefix cached there.
    system = "You are a careful assistant who answers in one short sentence. " * 16
    before, cached = after, []
    for i in range(6):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}],
            max_tokens=1,
        )
        details = r.usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else 0)
    after = cluster.engine_requests()
    gained = sorted(after.get(a, 0) - before.get(a, 0) for a in cluster.engine_addresses)
    assert gained == [0, 6], gained
    assert cached[0] == 0 or cached[0] < cached[1]
    assert all(c >= 64 for c in cached[1:]), cached


def test_client_disconnect_frees_the_engines_blocks(cluster):
    client = cluster.client(timeout=30)
    stream = client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # the client goes away mid-stream

    def idle() -> bool:
        infos = [engine_info(a) for a in cluster.engine_addresses]
        return all(i.num_running == 0 and i.num_waiting == 0 for i in infos) and all(
            i.num_free_blocks == i.num_total_blocks for i in infos
        )

    wait_until(idle, 10, "the aborted request's blocks to be freed", cluster.processes)


def test_engine_killed_mid_run(cluster):
    """Last in this module: it kills an engine."""
    client = cluster.client(timeout=60)

    def one(i: int) -> str:
        try:
            r = client.completions.create(
                model=MODEL, prompt=f"Hello there {i}", max_tokens=300, extra_body={"ignore_eos": True}
            )
            return r.choices[0].finish_reason
        except openai.APIStatusError as err:
            return f"http {err.status_code}"

    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(one, i) for i in range(8)]
        victim = cluster.engine_addresses[0]
        wait_until(lambda: engine_info(victim).num_running > 0, 10, "requests running on the victim")
        cluster.engines[0].kill()  # SIGKILL with requests in flight
        results = [f.result(timeout=60) for f in first]
        assert "http 503" in results and set(results) <= {"length", "http 503"}, results
        started = time.monotonic()
        results = list(pool.map(one, range(8)))
    assert results == ["length"] * 8  # every new request is served by the survivor
    assert time.monotonic() - started < 60
    assert cluster.engines_ready() == 1


def http_json_post(url: str, body: dict) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())
