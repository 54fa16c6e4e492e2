"""Fixtures of the reliability suite: the scale (CPU for CI, or `--heavy`), one stack of real processes for
the session, and the tallies that `--record-results` writes to benchmarks/results.jsonl.

    pytest tests/reliability                          CPU mode: what CI runs (a few minutes on 2 cores)
    pytest tests/reliability --heavy                  the larger run (10-minute soak, longer outputs, more
                                                      cases), meant for the GPU machine (engines on CUDA)
    pytest tests/reliability --record-results         also append the counted figures to benchmarks/
    pytest tests/reliability --soak-seconds 480       the soak's length (default: 30 s, 600 s with --heavy)

The options belong to this folder: give them with `tests/reliability` (or a file in it) on the command line.
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass

import pytest
from reliability_client import Tally
from reliability_record import record
from reliability_stack import Stack


def pytest_addoption(parser):
    group = parser.getgroup("reliability")
    group.addoption("--heavy", action="store_true", help="reliability suite: the larger run (GPU machine)")
    group.addoption(
        "--record-results", action="store_true", help="reliability suite: append figures to benchmarks/"
    )
    group.addoption("--soak-seconds", type=float, help="reliability suite: the soak's length")


@dataclass(frozen=True)
class Scale:
    mode: str
    device: str  # of the engines
    clients: int  # concurrent streaming clients of the load test
    load_max_tokens: int
    soak_s: float
    soak_workers: int
    fault_streams: int  # streams in flight when a fault strikes
    disconnects: int
    http_fuzz_cases: int
    grpc_fuzz_cases: int
    client_timeout_s: float  # a request with no end after this long counts as hung
    tokenizer_fuzz_cases: int = 300
    envelope_fuzz_cases: int = 300  # HTTP bodies with odd encodings, types and lengths


CPU = Scale("cpu", "cpu", 1000, 8, 30, 12, 16, 120, 2500, 400, 120, 300, 300)
HEAVY = Scale("heavy", "auto", 1000, 64, 600, 64, 64, 1000, 10000, 3000, 300, 3000, 3000)


@pytest.fixture(scope="session")
def scale(request) -> Scale:
    chosen = HEAVY if request.config.getoption("--heavy", default=False) else CPU
    soak_s = request.config.getoption("--soak-seconds", default=None)
    return chosen if soak_s is None else dataclasses.replace(chosen, soak_s=soak_s)


@pytest.fixture(scope="session", autouse=True)
def _open_files() -> None:
    """A thousand clients need a thousand sockets on each side; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="session")
def tallies(request, scale):
    """Every scenario's tally; written to benchmarks/ at the end with --record-results."""
    done: list[Tally] = []
    yield done
    if request.config.getoption("--record-results", default=False):
        record(done, scale.mode)
    for t in done:
        print(t.summary(), t.figures)


@pytest.fixture
def tally(tallies):
    def make(scenario: str) -> Tally:
        t = Tally(scenario)
        tallies.append(t)
        return t

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


@pytest.fixture(scope="session")
def shared_stack(tiny_model_dir, tmp_path_factory, scale):
    """Tokenizer, two engines and a router (prefix affinity, 0.5 s health checks), for the session.

    Engines push back past 384 requests without output (--max-waiting), so a burst of a thousand
    clients may meet 429s as well as answers (it depends on how fast the engines take them)."""
    engine_args = ("--max-waiting", "384", "--shutdown-grace-period", "20")
    stack = Stack(
        tiny_model_dir, tmp_path_factory.mktemp("logs"), device=scale.device, engine_args=engine_args
    )
    stack.start_router()
    yield stack
    stack.stop()


@pytest.fixture
def stack(shared_stack) -> Stack:
    """The shared stack, healed of whatever an earlier test did to it."""
    shared_stack.heal()
    return shared_stack
