"""The `pagoda` command: one entry point, one sub-command per service.

Each sub-command lives with the service it starts and exposes `main(argv)`; this module only
dispatches, so that `pagoda router` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module, help text)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("pagoda.serve", "run tokenizer, engines and router on this machine"),
    "engine": ("engine_service.server.main", "run the gRPC engine service"),
    "tokenizer": ("tokenizer_service.main", "run the gRPC tokenizer service"),
    "router": ("router.main", "run the OpenAI-compatible HTTP router"),
    "bench": ("pagoda.bench", "benchmarks: `throughput` (offline, in-process) and `serve` (online)"),
    "generate": ("pagoda.generate", "generate offline from a prompt (no servers)"),
    "download": ("pagoda.download", "fetch a Hugging Face model at a pinned revision into a folder, once"),
}


def usage() -> str:
    lines = ["usage: pagoda COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`pagoda COMMAND --help` describes each command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from pagoda import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pagoda: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
