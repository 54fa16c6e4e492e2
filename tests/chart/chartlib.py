"""Helpers of the chart tests: paths, the rendered manifests, and readers of container args."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pagoda"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "llm"
RELEASE = "pagoda"

# `None` is the chart's own defaults; the rest are the files under charts/pagoda/ci/.
VALUES_CASES: list[Path | None] = [None, *CI_VALUES]
VALUES_IDS = ["defaults", *[p.name.removesuffix("-values.yaml") for p in CI_VALUES]]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Rendered:
    """The manifests of one `helm template` run."""

    manifests: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def deployments(self, component: str) -> list[dict]:
        return [
            m
            for m in self.of_kind("Deployment")
            if m["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def template_args(chart: Path, values: Path | None, *extra: str) -> list[str]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    return [*args, *extra]


def load_manifests(text: str) -> list[dict]:
    return [m for m in yaml.load_all(text, Loader=_Loader) if m]


def render_notes(helm: str, values: Path | None) -> str:
    """NOTES.txt as `helm install` would print it.

    `helm template` never renders NOTES.txt and `helm install --dry-run` needs a cluster, so a copy
    of the chart gets one more template that carries the notes' text inside a YAML document.
    """
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "pagoda"
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "zz-notes.yaml").write_text(
            '{{- define "test.notes" }}' + notes + "{{ end }}\n"
            'kind: Notes\ntext: {{ include "test.notes" . | toJson }}\n'
        )
        proc = run_helm(helm, *template_args(chart, values, "--show-only", "templates/zz-notes.yaml"))
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)["text"]


def ci_values(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.exists(), path
    return path


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` (or `--name value`) in a container's args; None when absent."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args) and not args[i + 1].startswith("--"):
            return args[i + 1]
    return None


def flags(args: list[str], name: str) -> list[str]:
    """Every value of a repeatable `--name=value` in a container's args."""
    return [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]


def container(deployment: dict, name: str) -> dict:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]
