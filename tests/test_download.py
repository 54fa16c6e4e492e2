"""`pagoda download` (the chart's weights Job) against a Hub on loopback that speaks the endpoints
huggingface_hub calls: the file tree of a revision, then HEAD and GET of each file (with Range).

Downloaded once, skipped when the marker names the same revision, resumed after a cut connection,
gated repositories need the token file, and a repository without config.json is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from aiohttp import web

from pagoda.download import MARKER, DownloadError, download, is_complete, main

REPO, GATED = "acme/tiny-model", "acme/gated-model"
SHA, SHA2 = "a" * 40, "b" * 40
TOKEN = "hf_test_token"
# 24 MiB: huggingface_hub writes in 10 MiB chunks, so a cut half-way leaves whole chunks to resume from.
WEIGHTS = bytes(range(256)) * 4096 * 24


class FakeHub:
    """Files per (repo, revision); `cut_once` makes the first GET of a file stop half-way."""

    def __init__(self) -> None:
        self.files = {
            (REPO, SHA): {"config.json": b'{"model_type": "llama"}', "model.safetensors": WEIGHTS,
                          "README.md": b"not fetched"},
            (REPO, SHA2): {"config.json": b'{"model_type": "llama", "v": 2}',
                           "model.safetensors": WEIGHTS[:10]},
            (GATED, SHA): {"config.json": b"{}"},
            ("acme/not-a-model", SHA): {"data.json": b"[]"},
        }  # fmt: skip
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_once: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models/{repo:.+}/tree/{rev}", self.tree)
        app.router.add_route("*", "/{repo:.+}/resolve/{rev}/{name}", self.resolve)
        return app

    def _files(self, request: web.Request) -> dict[str, bytes]:
        repo, rev = request.match_info["repo"], request.match_info["rev"]
        self.requests.append((request.method, request.path, request.headers.get("Range")))
        if repo == GATED and request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(headers={"X-Error-Code": "GatedRepo"}, text="gated")
        if (repo, rev) not in self.files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"}, text="no such revision")
        return self.files[(repo, rev)]

    async def tree(self, request: web.Request) -> web.Response:
        files = self._files(request)
        return web.json_response(
            [
                {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for n, d in files.items()
            ]
        )

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        data = self._files(request)[request.match_info["name"]]
        headers = {"X-Repo-Commit": request.match_info["rev"], "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        start = (
            int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            if "Range" in request.headers
            else 0
        )
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(data) - start
        await response.prepare(request)
        name = request.match_info["name"]
        if name in self.cut_once:  # half of it, then the connection drops
            self.cut_once.discard(name)
            await response.write(data[start : start + (len(data) - start) // 2])
            request.transport.close()
            return response
        await response.write(data[start:])
        return response


@pytest.fixture
async def hub():
    fake = FakeHub()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


async def fetch(hub: FakeHub, dest: Path, repo: str = REPO, revision: str = SHA, **kw) -> bool:
    return await asyncio.to_thread(download, repo, revision, dest, endpoint=hub.url, **kw)


async def test_downloads_once_and_skips_when_present(hub, tmp_path):
    dest = tmp_path / REPO / SHA
    assert await fetch(hub, dest) is True
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert not (dest / "README.md").exists(), "only what an engine reads"
    assert json.loads((dest / MARKER).read_text())["revision"] == SHA and is_complete(dest, REPO, SHA)
    hub.requests.clear()
    assert await fetch(hub, dest) is False
    assert hub.requests == [], "a present revision costs no request"
    # Another revision in the same folder is fetched (the marker names the revision it holds).
    assert not is_complete(dest, REPO, SHA2)
    assert await fetch(hub, dest, revision=SHA2) is True and is_complete(dest, REPO, SHA2)


async def test_resumes_a_cut_download(hub, tmp_path):
    """The connection drops half-way through the weights: the next GET asks only for the rest. (The
    partial file lives in DIR/.cache/huggingface, so a retried Job resumes from it the same way.)"""
    hub.cut_once.add("model.safetensors")
    dest = tmp_path / "model"
    await fetch(hub, dest)
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS and is_complete(dest, REPO, SHA)
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
    assert len(gets) == 2 and gets[0][2] is None
    assert gets[1][2] is not None and gets[1][2].startswith("bytes=") and gets[1][2] != "bytes=0-", gets


async def test_gated_repo_needs_the_token_file(hub, tmp_path):
    with pytest.raises(DownloadError, match=GATED):
        await fetch(hub, tmp_path / "no-token", repo=GATED)
    assert not is_complete(tmp_path / "no-token", GATED, SHA)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["--repo", GATED, "--revision", SHA, "--dir", str(tmp_path / "gated"),
            "--token-file", str(token_file), "--endpoint", hub.url]  # fmt: skip
    assert await asyncio.to_thread(main, args) == 0
    assert is_complete(tmp_path / "gated", GATED, SHA)


async def test_unknown_revision_and_non_models_fail_clearly(hub, tmp_path):
    with pytest.raises(DownloadError, match="acme/tiny-model@" + "c" * 40):
        await fetch(hub, tmp_path / "x", revision="c" * 40)
    args = ["--repo", "acme/not-a-model", "--revision", SHA, "--dir", str(tmp_path / "y"),
            "--endpoint", hub.url, "--allow-pattern", "*.json"]  # fmt: skip
    assert await asyncio.to_thread(main, args) == 1
    assert not (tmp_path / "y" / MARKER).exists()
