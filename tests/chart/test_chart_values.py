"""values.schema.json refuses bad values before anything reaches a cluster; every value is documented."""

from __future__ import annotations

import pytest
import yaml

from . import values_doc
from .chartlib import CHART, run_helm, template_args

# (values that must be refused, a fragment of helm's error)
BAD_VALUES = {
    "tp-not-an-integer": (
        {"models": [{"name": "m", "source": {"type": "builtin"}, "tensorParallelSize": "2"}]},
        "tensorParallelSize",
    ),
    "tp-zero": (
        {"models": [{"name": "m", "source": {"type": "builtin"}, "tensorParallelSize": 0}]},
        "tensorParallelSize",
    ),
    "model-name-not-dns": ({"models": [{"name": "Llama_3", "source": {"type": "builtin"}}]}, "name"),
    "no-models": ({"models": []}, "models"),
    "unknown-source": ({"models": [{"name": "m", "source": {"type": "ftp"}}]}, "type"),
    "pvc-without-claim": ({"models": [{"name": "m", "source": {"type": "pvc"}}]}, "pvc"),
    "typo-in-key": ({"engine": {"shmsize": "1Gi"}}, "shmsize"),
    "unknown-top-level": ({"replicaCount": 3}, "replicaCount"),
    "gpu-flag-as-string": ({"gpu": {"enabled": "yes"}}, "gpu.enabled"),
    "port-out-of-range": ({"router": {"port": 80000}}, "router.port"),
    "bad-policy": ({"router": {"policy": "random"}}, "router.policy"),
    "bad-quantity": ({"engine": {"shmSize": "lots"}}, "shmSize"),
    "privileged": ({"security": {"containerSecurityContext": {"privileged": True}}}, "privileged"),
    "root": ({"security": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
}


@pytest.mark.parametrize("values", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(helm, tmp_path, values):
    data, fragment = values
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_helm(helm, *template_args(CHART, path))
    assert proc.returncode != 0, f"accepted: {data}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"engine": {"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}},
            "enable either keda or hpa",
        ),
        (
            {
                "models": [
                    {"name": "a", "source": {"type": "builtin"}},
                    {"name": "a", "source": {"type": "builtin"}},
                ]
            },
            'the name "a" is used twice',
        ),
        ({"router": {"httpRoute": {"enabled": True}}}, "router.httpRoute.parentRefs"),
    ],
    ids=["two-engine-autoscalers", "duplicate-model", "route-without-gateway"],
)
def test_templates_refuse_contradictions(helm, tmp_path, values, message):
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, *template_args(CHART, path))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_every_value_is_documented():
    rows, problems = values_doc.parse((CHART / "values.yaml").read_text())
    assert problems == []
    assert len(rows) > 100
    assert all(row.description for row in rows)


def test_readme_values_table_is_current():
    readme = (CHART / "README.md").read_text()
    assert values_doc.START in readme and values_doc.END in readme
    current = readme.split(values_doc.START, 1)[1].split(values_doc.END, 1)[0].strip()
    rows, _ = values_doc.parse((CHART / "values.yaml").read_text())
    assert current == values_doc.table(rows), "run `python tests/chart/values_doc.py` and paste the table"


def test_readme_shows_the_installs_it_promises():
    readme = (CHART / "README.md").read_text()
    for text in (
        "helm install pagoda charts/pagoda",
        "gpu.enabled=false",
        "kubectl scale",
        "ScaledObject",
        "prometheus-adapter",
        "make images",
    ):
        assert text in readme, text
