"""`pagoda download`: a Hugging Face model repository at a pinned revision, into a folder, once.

The Helm chart runs it in a Job for a model whose `source.type` is `huggingFace`: the Job writes into a
volume that every engine of the model then mounts read-only, and the engines' init containers wait
for the marker file this command writes last. So the weights cross the network once per revision,
not once per pod, and engines start from a local folder with no network.

    pagoda download --repo Qwen/Qwen2.5-7B-Instruct --revision a09a354... --dir /weights/Qwen/...

- Skipped when the folder's marker names the same repo and revision (a Job re-run by Helm costs nothing).
- Resumable: huggingface_hub keeps partial files under `DIR/.cache/huggingface` and continues them,
  so a Job retried after a lost node or a network error picks up where it stopped.
- The token comes from a file (`--token-file`, a mounted Secret), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("pagoda.download")

MARKER = ".pagoda-complete"  # written last: the folder is whole
# What an engine and a tokenizer read; the rest of a repo (other formats, images, READMEs) stays behind.
DEFAULT_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "*.txt")


class DownloadError(RuntimeError):
    """The repository, revision or token cannot give a usable model folder; the message says why."""


def is_complete(dest: Path, repo: str, revision: str) -> bool:
    """Whether `dest` already holds `repo` at `revision` (its marker says so)."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("repo") == repo and marker.get("revision") == revision


def download(
    repo: str,
    revision: str,
    dest: Path,
    *,
    allow_patterns: tuple[str, ...] = DEFAULT_PATTERNS,
    token: str | None = None,
    endpoint: str | None = None,
) -> bool:
    """Fetches `repo` at `revision` into `dest` unless it is there already; True when it downloaded."""
    if is_complete(dest, repo, revision):
        log.info("%s@%s is already in %s: nothing to do", repo, revision, dest)
        return False
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:
        raise DownloadError(
            f"downloading needs huggingface_hub ({err}): pip install huggingface_hub"
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s@%s into %s (%s)", repo, revision, dest, ", ".join(allow_patterns))
    try:
        snapshot_download(
            repo_id=repo,
            revision=revision,
            local_dir=dest,
            allow_patterns=list(allow_patterns),
            token=token or False,  # False: no token, and none picked up from the environment either
            endpoint=endpoint,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        raise DownloadError(f"{repo}@{revision}: {err}") from None
    if not (dest / "config.json").is_file():
        raise DownloadError(f"{repo}@{revision} has no config.json: not a Hugging Face model repository")
    _write_marker(dest, {"repo": repo, "revision": revision, "allow_patterns": list(allow_patterns)})
    log.info("downloaded %s@%s", repo, revision)
    return True


def _write_marker(dest: Path, content: dict) -> None:
    tmp = dest / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, dest / MARKER)  # atomic: readers see no marker or a whole one


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pagoda download",
        description="Download a Hugging Face model repository at a pinned revision into a folder, once.",
    )
    p.add_argument("--repo", required=True, help="the repository id, e.g. Qwen/Qwen2.5-7B-Instruct")
    p.add_argument("--revision", required=True, help="the commit to fetch (a commit hash pins it for good)")
    p.add_argument("--dir", required=True, type=Path, help="the folder to fill")
    p.add_argument(
        "--allow-pattern",
        action="append",
        default=[],
        help=f"files to fetch (repeatable; default: {' '.join(DEFAULT_PATTERNS)})",
    )
    p.add_argument(
        "--token-file", help="a file holding the Hugging Face token (gated or private repositories)"
    )
    p.add_argument("--endpoint", help="the Hub's URL (default: https://huggingface.co, or a mirror)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pagoda.telemetry.logging import setup_logging

    args = parse_args(argv)
    setup_logging("text", "download")
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
        download(
            args.repo,
            args.revision,
            args.dir,
            allow_patterns=tuple(args.allow_pattern) or DEFAULT_PATTERNS,
            token=token,
            endpoint=args.endpoint,
        )
    except (OSError, DownloadError) as err:
        print(f"pagoda download: {err}", file=sys.stderr)
        return 1
    return 0
