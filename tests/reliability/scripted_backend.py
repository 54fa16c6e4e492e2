"""The scripted tokenizer and engine of the router tests (tests/router/router_fakes.py) in a process of
their own: a backend that answers in microseconds, for fuzzing a real router process.

    python tests/reliability/scripted_backend.py    prints "TOKENIZER_PORT ENGINE_PORT"; serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "router"), str(TESTS.parent)]

from router_fakes import Script, start_engine, start_tokenizer  # noqa: E402


async def main() -> None:
    tokenizer, tokenizer_port, _ = await start_tokenizer()
    engine, engine_port, _ = await start_engine(Script(max_model_len=512))
    print(tokenizer_port, engine_port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await engine.stop(0)
    await tokenizer.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
