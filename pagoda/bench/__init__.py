"""`pagoda bench`: `throughput` (offline, in-process, beside vLLM / transformers) and `serve` (online, against
a running router). Each sub-command lives in its own module with `main(argv)`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "throughput": (
        "pagoda.bench.throughput",
        "offline throughput on random weights, with roofline and peers",
    ),
    "serve": ("pagoda.bench.serve", "online serving benchmark against a running router"),
    "grpc": (
        "pagoda.bench.grpc_throughput",
        "streaming throughput through the engine gRPC service vs offline",
    ),
}


def usage() -> str:
    lines = ["usage: pagoda bench COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"pagoda bench: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
