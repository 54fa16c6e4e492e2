"""A real stack on loopback: tokenizer service, one engine and a router, each `pagoda` in its own process."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.router.router_processes import Process, engine_ready, free_port, http_json, wait_until


class Stack:
    def __init__(self, model_dir: Path, log_dir: Path, name: str, router_args: tuple[str, ...] = ()):
        self.name = name
        tokenizer_port, router_port, engine_port = free_port(), free_port(), free_port()
        self.engine_address = f"127.0.0.1:{engine_port}"
        common = ["--host", "127.0.0.1", "--metrics-port", "0"]
        self.tokenizer = Process(
            [
                "tokenizer",
                "--model",
                str(model_dir),
                *common,
                "--port",
                str(tokenizer_port),
                "--workers",
                "1",
            ],
            log_dir,
            "tokenizer",
        )
        self.engine = Process(
            [
                "engine",
                "--model",
                str(model_dir),
                "--served-model-name",
                name,
                "--device",
                "cpu",
                "--dtype",
                "float32",
                *common,
                "--port",
                str(engine_port),
                "--max-model-len",
                "1024",
                "--max-num-seqs",
                "16",
            ],
            log_dir,
            "engine",
        )
        self.router = Process(
            [
                "router",
                "--host",
                "127.0.0.1",
                "--port",
                str(router_port),
                "--tokenizer",
                f"127.0.0.1:{tokenizer_port}",
                "--engine",
                self.engine_address,
                *router_args,
            ],
            log_dir,
            "router",
        )
        self.processes = [self.tokenizer, self.engine, self.router]
        self.url = f"http://127.0.0.1:{router_port}"
        wait_until(lambda: engine_ready(self.engine_address), 180, "the engine", self.processes)
        wait_until(lambda: http_json(self.url + "/health")[0] == 200, 30, "the router", self.processes)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def stop(self) -> None:
        for p in self.processes:
            p.stop()
