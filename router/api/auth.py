"""API keys: `Authorization: Bearer KEY` checked against keys from flags and an optional key file.

The key file holds one key per line (blank lines and `#` comments skipped) and is re-read when it
changes, so keys rotate without a restart (a Kubernetes Secret mounted as a file updates in place).

Keys are held only as SHA-256 digests and compared digest to digest, each comparison in constant time and
always against every key, so response time reveals neither a key's bytes, its length, nor which key came
close. A key is never logged; the rest of the router knows a caller by its key id, a digest of its key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from pathlib import Path

from router.errors import OpenAIError

log = logging.getLogger(__name__)

# Paths that stay open with keys configured: probes and scrapers carry no key.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], key_file: str | None, reload_interval_s: float = 1.0):
        self._flag_keys = tuple(_digest(k.encode()) for k in keys)
        self._file = Path(key_file) if key_file else None
        self._file_keys: tuple[bytes, ...] = ()
        self._mtime: float | None = None
        self._interval_s = reload_interval_s
        if self._file is not None:
            self._load()  # a missing or unreadable file fails at start-up, loudly

    @property
    def enabled(self) -> bool:
        return bool(self._flag_keys) or self._file is not None

    def check(self, authorization: str | None) -> str:
        """The caller's key id (a digest of its key, for per-key limits and cache salts), or a 401 unless
        the header carries a valid key. A 401 says only that no valid key came, never what was wrong."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                code="invalid_api_key",
            )
        # Header bytes that are not UTF-8 arrive as surrogate escapes: hash them back to the same bytes.
        candidate = _digest(token.strip().encode("utf-8", "surrogateescape"))
        valid = False
        for key in self._flag_keys + self._file_keys:  # no early exit: every key is compared
            valid |= hmac.compare_digest(candidate, key)
        if not valid:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return key_id(candidate)

    async def watch_file(self) -> None:
        """Re-reads the key file when its mtime changes; runs until cancelled."""
        while self._file is not None:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self._reload_if_changed)
            except OSError as err:
                log.warning("cannot read API key file %s (keeping the previous keys): %s", self._file, err)

    def _reload_if_changed(self) -> None:
        if os.stat(self._file).st_mtime != self._mtime:
            self._load()
            log.info("reloaded %d API keys from %s", len(self._file_keys), self._file)

    def _load(self) -> None:
        mtime = os.stat(self._file).st_mtime
        lines = self._file.read_text().splitlines()
        self._file_keys = tuple(
            _digest(line.strip().encode())
            for line in lines
            if line.strip() and not line.lstrip().startswith("#")
        )
        self._mtime = mtime


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def key_id(digest: bytes) -> str:
    """A name for a key that reveals nothing usable: a hash of its digest, domain-separated."""
    return hashlib.sha256(b"pagoda key id:" + digest).hexdigest()[:32]
