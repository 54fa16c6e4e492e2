"""`pagoda serve` with the default SmolLM2 model on CPU: starts the stack, answers, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest
from router_processes import REPO, free_port

from pagoda.serve import example, plan_engines


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_plan_engines():
    assert plan_engines("cpu", None, 4) == [("cpu", {})]
    assert [d for d, _ in plan_engines("auto", None, 2)] == ["cuda", "cuda"]
    assert [env for _, env in plan_engines("auto", 2, 2)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]
    assert plan_engines("auto", None, 0) == [("cpu", {})]
    with pytest.raises(SystemExit):
        plan_engines("cuda", None, 0)
    with pytest.raises(SystemExit):
        plan_engines("cuda", 3, 2)
    # tensor parallelism: each engine sees its own group of GPUs
    assert [env for _, env in plan_engines("auto", None, 4, tp_size=2)] == [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "2,3"},
    ]
    with pytest.raises(SystemExit):
        plan_engines("cuda", 2, 2, tp_size=2)
    # The banner names where the key lives, never the key itself (issue 25: serve printed it).
    banner = example("http://127.0.0.1:8000", "m", True)
    assert 'Authorization: Bearer $PAGODA_API_KEY"' in banner and "PAGODA_API_KEY" in banner
    assert "Authorization" not in example("http://127.0.0.1:8000", "m", False)


@pytest.mark.slow
def test_pagoda_serve_default_model(default_model_dir, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "pagoda.cli", "serve", "--port", str(port), "--device", "cpu"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read_stdout():
        for line in serve.stdout:
            lines.append(line.decode())
            if "Press Ctrl-C" in lines[-1]:
                ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        assert ready.wait(240), (tmp_path / "serve.log").read_text()[-3000:]
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in banner and "SmolLM2-135M-Instruct" in banner
        children = children_of(serve.pid)
        assert len(children) == 3  # tokenizer, one CPU engine, router
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
        assert "Paris" in r.choices[0].message.content
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
        for pid in children:  # every child is gone (reaped by serve)
            assert (
                not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()
