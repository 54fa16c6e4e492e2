"""Issue 25, breaks 3 and 8, with a real `pagoda serve` (tokenizer, two CPU engines, router; the tiny model):
it supervises like a process manager. A killed engine is started again while the other keeps serving; a
killed tokenizer too; a second serve on the same port is an error before anything starts; a killed
supervisor takes its children with it; the API key (from PAGODA_API_KEY) is never printed nor on a
command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from reliability_client import Outcome

from tests.router.router_processes import REPO, free_port, wait_until

KEY = "sk-serve-0123456789-secret"
pytestmark = pytest.mark.slow


def children(pid: int) -> dict[int, str]:
    """pid -> command line of the process's direct children."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out[int(stat.parent.name)] = cmdline
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


def ours(pid: int, serve_pid: int) -> bool:
    """Whether `pid` is still one of this serve's children (a pid may be reused once it died)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return alive(pid) and f"pagoda.supervised {serve_pid} " in cmdline


def role(cmdline: str) -> str:
    """The sub-command of a child (after the supervisor's pid); "" for a zombie (no command line)."""
    words = cmdline.split("pagoda.supervised", 1)[1].split() if "pagoda.supervised" in cmdline else []
    return words[1] if len(words) > 1 else ""


def chat(url: str, model: str, key: str | None) -> tuple[int, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    request = urllib.request.Request(url + "/v1/chat/completions", body.encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError as err:
        return 0, {"error": str(err)}


def health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def test_serve_supervises_its_children(tiny_model_dir, tmp_path, tally):
    t = tally("fault: pagoda serve, children killed (engine, tokenizer), then serve itself")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PAGODA_API_KEY": KEY}
    command = [
        sys.executable,
        "-m",
        "pagoda.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
    ]
    command += ["--device", "cpu", "--engines", "2"]
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in serve.stdout:
            lines.append(line.decode())
            if "Press Ctrl-C" in lines[-1]:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    seen: set[int] = set()  # every child pid, to clean up whatever a failure leaves
    try:
        assert ready.wait(300), (tmp_path / "serve.log").read_text()[-3000:]
        model = next(line.split()[3] for line in lines if line.startswith("Pagoda is serving"))
        kids = children(serve.pid)
        seen.update(kids)
        assert sorted(role(c) for c in kids.values()) == ["engine", "engine", "router", "tokenizer"], kids

        # The key: required, never printed, never on a command line.
        assert chat(url, model, None)[0] == 401 and chat(url, model, KEY)[0] == 200
        assert KEY not in "".join(lines) and all(KEY not in c for c in kids.values())

        # A second serve on the same port: an error at once, nothing started, nothing claimed.
        started = time.monotonic()
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "in use" in second.stderr, second.stderr[-500:]
        assert "Pagoda is serving" not in second.stdout and time.monotonic() - started < 30

        # An engine killed: the other one serves meanwhile; it is started again and taken back.
        engine = next(pid for pid, c in kids.items() if role(c) == "engine")
        os.kill(engine, signal.SIGKILL)
        served = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = chat(url, model, KEY)
            served.append(status)
            t.add(Outcome("ok" if status == 200 else "error" if status in (429, 503) else "lost", status))
            engines = [pid for pid, c in children(serve.pid).items() if role(c) == "engine"]
            if len(engines) == 2 and engine not in engines and health(url).get("engines_ready") == 2:
                break  # a new engine in the dead one's place, and the router uses it
        else:
            raise AssertionError(f"the engine was not back in 120 s: {served[-5:]}")
        assert served.count(200) >= len(served) - 2, served  # the survivor kept serving
        assert sorted(role(c) for c in children(serve.pid).values()).count("engine") == 2

        # The tokenizer killed: chat is 503 a moment, then back without anyone's help.
        seen.update(children(serve.pid))
        tokenizer = next(pid for pid, c in children(serve.pid).items() if role(c) == "tokenizer")
        os.kill(tokenizer, signal.SIGKILL)
        wait_until(lambda: chat(url, model, KEY)[0] == 200, 120, "chat after the tokenizer's restart")
        t.add(Outcome("ok", 200))
        assert serve.poll() is None, "serve exited"
        assert "starting it again" in (tmp_path / "serve.log").read_text()

        # The supervisor killed outright: its children go with it.
        kids = children(serve.pid)
        seen.update(kids)
        serve.kill()
        serve.wait(10)
        wait_until(lambda: not any(ours(pid, serve.pid) for pid in kids), 45, "the children to follow serve")
        t.figures.update(
            {
                "answers while an engine was down": f"{served.count(200)} of {len(served)} ok",
                "children left after serve was killed": 0,
            }
        )
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in seen:
            if ours(pid, serve.pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
