"""Engine discovery: each source reports the full set of engine addresses it knows, whenever it changes.

A source is an object with `async run(update)`, where `update(addresses)` replaces that source's set in
the registry; `run` runs until cancelled (or returns, for a static list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Update = Callable[[Iterable[str]], None]


def host_port(host: str, port: int) -> str:
    """An address gRPC understands: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
