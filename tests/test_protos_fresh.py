"""The committed gRPC code is what `make protos` makes from the .proto files, and it imports on the
GPU machine (grpcio 1.84.0, protobuf 7.36.2), whose generated-code version checks refuse code made
by newer tools."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# The oldest runtimes the committed code must accept: those of the GPU machine (FACTS.md).
OLDEST_GRPCIO = (1, 84, 0)
OLDEST_PROTOBUF = (7, 36, 2)
TOOLS_PIN = "grpcio-tools==1.84.0"


def test_generated_code_is_fresh(tmp_path: Path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (the GPU machine has none)")
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    # The same command as `make protos`, into a temporary folder.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS)]
    cmd += [f"--{kind}_out={tmp_path}" for kind in ("python", "pyi", "grpc_python")]
    subprocess.run(cmd + protos, check=True, cwd=ROOT)

    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p: (ROOT / p).read_bytes() for p in _committed_generated_files()}
    assert sorted(map(str, committed)) == sorted(map(str, fresh)), (
        "generated files without a .proto, or missing"
    )
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, (
        f"{stale} differ from what `make protos` makes now: run `make protos` and commit. If only the "
        f"version lines differ, the installed grpcio-tools is not the pinned one: pip install {TOOLS_PIN}"
    )


def test_generated_code_accepts_the_gpu_machines_runtimes():
    files = _committed_generated_files()
    assert files
    for path in files:
        text = (ROOT / path).read_text()
        if path.name.endswith("_pb2_grpc.py"):
            (version,) = re.findall(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", text, re.M)
            assert _version(version) <= OLDEST_GRPCIO, f"{path} needs grpcio>={version}; use {TOOLS_PIN}"
        elif path.name.endswith("_pb2.py"):
            (version,) = re.findall(r"^# Protobuf Python Version: ([\d.]+)$", text, re.M)
            assert _version(version) <= OLDEST_PROTOBUF, f"{path} needs protobuf>={version}"


def _committed_generated_files() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for package in ("pagoda/engine", "pagoda/tokenizer")
        for p in (ROOT / package).rglob("*")
        if p.name.endswith(GENERATED_SUFFIXES) and "__pycache__" not in p.parts
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))
