"""The two Dockerfiles: what they copy exists, and their entrypoints are real `pagoda` commands.

`docker build` cannot run here, so the files are parsed: instructions joined across line
continuations, comments dropped, exec-form ENTRYPOINT/CMD read as JSON.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import sys
import tomllib

import pytest

from pagoda.cli import COMMANDS

from .chartlib import ROOT

DOCKERFILES = ["Dockerfile.engine", "Dockerfile.router"]


def instructions(name: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] of a Dockerfile."""
    lines = [line for line in (ROOT / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(name: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions(name):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def final(name: str, word: str) -> list[str]:
    """The exec-form value of the last stage's ENTRYPOINT or CMD."""
    values = [rest for w, rest in stages(name)[-1] if w == word]
    assert values, f"{name}: the final stage has no {word}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{name}: {word} must be in exec form"
    return parsed


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_is_not_ignored(name):
    ignored = (ROOT / ".dockerignore").read_text()
    copies = [rest for word, rest in instructions(name) if word == "COPY"]
    assert copies
    for rest in copies:
        args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue  # between stages
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"
            assert f"!{source.rstrip('/')}" in ignored, f".dockerignore leaves {source} out of the context"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_and_non_root(name):
    assert len(stages(name)) >= 2, "build tools stay out of the final image"
    users = [rest for word, rest in stages(name)[-1] if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    text = (ROOT / name).read_text()
    assert "huggingface" not in text.lower() and "hf_hub" not in text, "no model download at build time"


def test_engine_image():
    assert final("Dockerfile.engine", "ENTRYPOINT") == ["pagoda", "engine"]
    assert "engine" in COMMANDS
    cmd = final("Dockerfile.engine", "CMD")
    volumes = [json.loads(rest) for word, rest in stages("Dockerfile.engine")[-1] if word == "VOLUME"]
    assert cmd[cmd.index("--model-cache-dir") + 1] in volumes[-1], "the model cache is a volume"
    froms = [rest for word, rest in instructions("Dockerfile.engine") if word == "FROM"]
    assert all(f.startswith("${CUDA_IMAGE}") for f in froms)
    text = (ROOT / "Dockerfile.engine").read_text()
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url', text), (
        "torch pinned, CUDA build"
    )


def test_engine_image_has_each_cuda_library_once():
    """torch's CUDA wheel brings cuBLAS, cuDNN, NCCL... as pip packages: the base is CUDA's `-base`
    flavour (no `-runtime`/`-devel` copies of them), no stage installs CUDA libraries with apt, and the
    base's CUDA version is the one of the torch index (cu128 <-> 12.8)."""
    text = (ROOT / "Dockerfile.engine").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-(\w+)-ubuntu", text)
    assert base, "the engine image's base is an nvidia/cuda image"
    major, minor, flavour = base.groups()
    assert flavour == "base", f"nvidia/cuda {flavour} duplicates the CUDA libraries torch's wheels carry"
    index = re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu(\d+)", text)
    assert index and index.group(1) == f"{major}{minor}", "torch's CUDA and the base image's CUDA differ"
    apt = " ".join(
        rest for word, rest in instructions("Dockerfile.engine") if word == "RUN" and "apt-get" in rest
    )
    for library in ("cuda-", "libcublas", "libcudnn", "libnccl", "libcusparse", "libcufft", "libnvjitlink"):
        assert library not in apt, f"{library} comes from torch's wheels, not apt"


def test_router_image_runs_router_and_tokenizer_without_torch():
    entrypoint = final("Dockerfile.router", "ENTRYPOINT")
    cmd = final("Dockerfile.router", "CMD")
    assert entrypoint == ["pagoda"] and cmd == ["router"]
    assert {"router", "tokenizer"} <= COMMANDS.keys()
    build = stages("Dockerfile.router")[0]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "pip install --no-deps ." in runs
    assert "torch" not in runs.replace('! python -c "import torch"', ""), "the router's venv gets no torch"
    final_stage = " ".join(rest for _, rest in stages("Dockerfile.router")[-1])
    assert "torch" not in final_stage


def test_pagoda_is_the_console_script():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["pagoda"] == "pagoda.cli:main"


def test_make_images_builds_both():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nimages:", 1)[1].split("\n\n", 1)[0]
    for name in DOCKERFILES:
        assert f"-f {name}" in target


def _module_level_imports(path) -> set[str]:
    """Top-level names imported when a module loads (imports inside functions are lazy: skipped)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(ast.Module(body=_top_level(tree.body), type_ignores=[])):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    out = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            out += _top_level(node.body)
    return out


def test_router_image_installs_what_router_and_tokenizer_import():
    """Pagoda goes into the router image with --no-deps: its pip list must cover every import."""
    text = (ROOT / "Dockerfile.router").read_text()
    build = " ".join(rest for word, rest in stages("Dockerfile.router")[0] if word == "RUN")
    listed = {_normalize(m) for m in re.findall(r'"([A-Za-z0-9_.-]+)==', build)}
    assert listed, "the router image pins its dependencies"
    files = [*(ROOT / "router").rglob("*.py"), *(ROOT / "tokenizer_service").rglob("*.py")]
    files += [ROOT / "pagoda" / name for name in ("cli.py", "models.py", "__init__.py", "download.py")]
    files += [*(ROOT / "pagoda" / "engine").rglob("*.py"), *(ROOT / "pagoda" / "tokenizer").rglob("*.py")]
    local = {"router", "tokenizer_service", "pagoda", "engine_service"}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for path in files:
        for name in _module_level_imports(path) - local - set(sys.stdlib_module_names):
            dists = {_normalize(d) for d in providers.get(name, [name])}
            if not dists & listed:
                missing.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"Dockerfile.router lacks the packages of these imports: {missing}"
    assert "torch" not in listed and "torch" not in text.split("AS runtime", 1)[1]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_router_image_can_run_the_weights_download():
    """The chart's weights Job runs `pagoda download` in the router image: its Hub client, imported when
    it runs, is huggingface_hub, which the image gets as a dependency of its pinned transformers."""
    assert "download" in COMMANDS
    source = (ROOT / "pagoda" / "download.py").read_text()
    assert "from huggingface_hub import snapshot_download" in source
    build = " ".join(rest for word, rest in stages("Dockerfile.router")[0] if word == "RUN")
    assert '"transformers==' in build
    requires = importlib.metadata.requires("transformers") or []
    assert any(_normalize(r.split(";")[0]).startswith("huggingface-hub") for r in requires)
