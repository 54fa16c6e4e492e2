"""KV-event routing against prefix hashing and least-requests, on a multi-turn chat workload.

    python -m benchmarks.kv_routing                       # two CPU engines with a small random Llama
    python -m benchmarks.kv_routing --device cuda --model /models/llama   # one engine per GPU (two GPUs)

For each policy (kv_aware, prefix_affinity, least_requests) it starts two `pagoda engine`s, a `pagoda
tokenizer` and a `pagoda router --policy P`, all fresh (empty caches), and runs the same conversations:
every conversation opens with one system prompt shared by all (as a product's assistant does), then takes
`--turns` turns, each sending the whole history so far plus a new user message, streamed, and appending the
reply; between turns the user "thinks" (`--think-time`, exponential), so a conversation's next turn finds
the engines busy with others; `--concurrency` conversations run at once. Per policy it reports the
prefix-cache hit rate (the prompt tokens the engines served from their caches, from each response's
usage.cached_tokens, over all prompt tokens), TTFT p50/p99 and how the requests split over the engines.

On CPU the figures are for comparing the policies on this machine only; they are not recorded in
benchmarks/results.jsonl. Hit rates move by several points from run to run (where least_requests sends a
conversation's next turn is down to timing, and so are kv_aware's load spills): run it more than once.
The engines' KV caches are kept small (--num-kv-blocks) so that a policy that scatters a conversation
over both engines pays for it in evictions and recomputed prefixes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from pagoda.bench.peers import subprocess_env
from pagoda.bench.report import percentiles_ms

POLICIES = ("kv_aware", "prefix_affinity", "least_requests")
WORDS = """time person year way day thing man world life hand part child eye woman place work week case point
company number group problem fact water room mother area money story month lot right study book job word
business issue side kind head house service friend father power hour game line end member law car city
community name president team minute idea kid body information back parent face others level office door
health art war history party result change morning reason research girl guy moment air teacher
force""".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random Llama with the default model's tokenizer and chat template: prefill costs grow with the
    prompt as a real model's do, at CPU speed."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pagoda.models import resolve_model

    source = resolve_model(None)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


class Stack:
    """Two engines, a tokenizer and a router, as processes on loopback."""

    def __init__(self, args, model: Path, policy: str, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir
        self.engine_ports = [free_port(), free_port()]
        self.router_port = free_port()
        tok_port = free_port()
        self._start(
            "tokenizer",
            ["tokenizer", "--model", str(model), "--host", "127.0.0.1", "--port", str(tok_port)]
            + ["--metrics-port", "0", "--workers", "1"],
        )
        for i, port in enumerate(self.engine_ports):
            env = {"CUDA_VISIBLE_DEVICES": str(i)} if args.device == "cuda" else {"OMP_NUM_THREADS": "1"}
            flags = ["engine", "--model", str(model), "--served-model-name", "bench", "--device", args.device]
            flags += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
            flags += ["--max-model-len", str(args.max_model_len), "--num-kv-blocks", str(args.num_kv_blocks)]
            flags += ["--max-num-seqs", str(args.concurrency)]
            if args.device == "cpu":
                flags += ["--dtype", "float32"]
            self._start(f"engine-{i}", flags, env)
        router = ["router", "--host", "127.0.0.1", "--port", str(self.router_port), "--policy", policy]
        router += ["--tokenizer", f"127.0.0.1:{tok_port}"]
        for port in self.engine_ports:
            router += ["--engine", f"127.0.0.1:{port}"]
        self._start("router", router)
        self.url = f"http://127.0.0.1:{self.router_port}"

    def _start(self, name: str, args: list[str], env: dict | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pagoda.cli", *args],
                env={**subprocess_env(), **(env or {})},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a process exited ({p.returncode}): see {self.log_dir}")
            try:
                async with session.get(self.url + "/health") as r:
                    if r.status == 200 and (await r.json()).get("engines_ready") == 2:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the stack was not ready within {timeout_s} s: see {self.log_dir}")

    async def engine_requests(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async with session.get(self.url + "/metrics") as r:
            text = await r.text()
        counts = {}
        for port in self.engine_ports:
            m = re.search(rf'pagoda_router_engine_requests_total{{engine="127.0.0.1:{port}"}} (\S+)', text)
            counts[str(port)] = int(float(m.group(1))) if m else 0
        return counts

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@dataclass
class Turn:
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int


@dataclass
class Conversation:
    messages: list[dict]
    user_turns: list[str]
    turns: list[Turn] = field(default_factory=list)


def conversations(args) -> list[Conversation]:
    rng = random.Random(args.seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    system = "You are the assistant of a shop. Rules: " + words(args.system_words)
    return [
        Conversation(
            [{"role": "system", "content": system}],
            [f"Customer {c}, question {t}: " + words(args.user_words) for t in range(args.turns)],
        )
        for c in range(args.conversations)
    ]


async def chat(session: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int):
    body = {
        "model": "bench",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, text, usage = None, [], None
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        async for line in r.content:
            if not line.startswith(b"data: ") or line[6:].strip() == b"[DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    text.append(content)
            usage = chunk.get("usage") or usage
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return Turn(
        ttft if ttft is not None else time.perf_counter() - start, usage["prompt_tokens"], cached
    ), "".join(text)


async def run_policy(args, model: Path, policy: str, log_root: Path) -> dict:
    log_dir = log_root / policy
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(args, model, policy, log_dir)
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await stack.wait_ready(session, args.start_timeout)
            await asyncio.sleep(2)  # the router's KV-event subscriptions open (kv_aware)
            convs = conversations(args)
            limit = asyncio.Semaphore(args.concurrency)
            pauses = random.Random(args.seed + 1)

            async def converse(conv: Conversation) -> None:
                await asyncio.sleep(pauses.uniform(0, 2 * args.think_time))  # users arrive spread out
                async with limit:
                    for user in conv.user_turns:
                        conv.messages.append({"role": "user", "content": user})
                        turn, reply = await chat(session, stack.url, conv.messages, args.max_tokens)
                        conv.turns.append(turn)
                        conv.messages.append({"role": "assistant", "content": reply})
                        if args.think_time:  # the user reads the reply and types the next message
                            await asyncio.sleep(pauses.expovariate(1 / args.think_time))

            start = time.perf_counter()
            await asyncio.gather(*(converse(c) for c in convs))
            duration = time.perf_counter() - start
            split = await stack.engine_requests(session)
    finally:
        stack.stop()
    turns = [t for c in convs for t in c.turns]
    later = [t for c in convs for t in c.turns[1:]]  # turns with the conversation's own history to reuse
    prompt = sum(t.prompt_tokens for t in turns)
    return {
        "policy": policy,
        "requests": len(turns),
        "hit_rate": sum(t.cached_tokens for t in turns) / prompt,
        "hit_rate_later_turns": sum(t.cached_tokens for t in later)
        / max(1, sum(t.prompt_tokens for t in later)),
        "ttft_ms": percentiles_ms([t.ttft_s for t in turns]),
        "duration_s": round(duration, 2),
        "engine_split": sorted(split.values(), reverse=True),
        "prompt_tokens": prompt,
    }


def format_row(r: dict) -> str:
    return (
        f"{r['policy']:<16} hit rate {100 * r['hit_rate']:5.1f}%"
        f" (turns 2+: {100 * r['hit_rate_later_turns']:5.1f}%)"
        f"  TTFT p50 {r['ttft_ms']['p50']:8.1f} ms  p99 {r['ttft_ms']['p99']:8.1f} ms"
        f"  split {r['engine_split']}  {r['duration_s']:.1f} s"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kv_routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--model", help="a model folder with a tokenizer (default: a small random Llama)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: one engine per GPU (0, 1)")
    p.add_argument("--hidden", type=int, default=256, help="the random model's hidden size")
    p.add_argument("--layers", type=int, default=4, help="the random model's layers")
    p.add_argument("--conversations", type=int, default=12)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=12, help="conversations at once")
    p.add_argument(
        "--think-time", type=float, default=1.0, help="mean seconds between a reply and the next turn"
    )
    p.add_argument("--system-words", type=int, default=150, help="words of the shared system prompt")
    p.add_argument("--user-words", type=int, default=80, help="words of each user message")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per reply")
    p.add_argument("--num-kv-blocks", type=int, default=320, help="KV blocks (16 tokens) per engine")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--log-dir", help="keep the services' logs here (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kv-routing-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else small_model(tmp / "model", args.hidden, args.layers)
        rows = []
        for policy in args.policies:
            logs = Path(args.log_dir) if args.log_dir else tmp / "logs"
            rows.append(asyncio.run(run_policy(args, model, policy, logs)))
            print(format_row(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
