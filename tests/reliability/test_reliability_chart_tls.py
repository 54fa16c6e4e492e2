"""The chart's TLS values: HTTPS on the router, mutual TLS from the router to engines and tokenizer.

Rendered with helm (no cluster), like tests/chart: every service's args parse with its own parser, the
certificate Secrets are mounted where the flags point, kubelet's gRPC probes use the plaintext health
port, the router's HTTP probes speak HTTPS, and the manifests are valid Kubernetes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine_service.server.main import parse_args as engine_args
from router.main import parse_args as router_args
from tests.chart.chartlib import (
    CHART,
    ROOT,
    container,
    load_manifests,
    pod_spec,
    run_helm,
    template_args,
)
from tokenizer_service.main import parse_args as tokenizer_args

VALUES = Path(__file__).with_name("chart_tls_values.yaml")


@pytest.fixture(scope="module")
def manifests(scale) -> list[dict]:
    if scale.mode == "heavy":
        pytest.skip("the chart is rendered in the CPU mode; --heavy is for the GPU machine")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch_helm.sh")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    helm = proc.stdout.strip().splitlines()[-1]
    rendered = run_helm(helm, *template_args(CHART, VALUES))
    assert rendered.returncode == 0, rendered.stderr
    return load_manifests(rendered.stdout)


def deployment(manifests: list[dict], component: str) -> dict:
    (found,) = [
        m
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def mounted_secrets(d: dict, name: str) -> dict[str, str]:
    """mountPath -> Secret name of the container's Secret volumes."""
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod_spec(d)["volumes"] if "secret" in v}
    return {
        m["mountPath"]: volumes[m["name"]] for m in container(d, name)["volumeMounts"] if m["name"] in volumes
    }


def test_services_get_tls_flags_that_parse_and_files_that_exist(manifests):
    for component, parse in (("engine", engine_args), ("tokenizer", tokenizer_args)):
        d = deployment(manifests, component)
        args = container(d, component)["args"]
        parsed = parse(args[1:] if args[0] == component else args)
        assert (parsed.tls_cert, parsed.tls_key, parsed.tls_client_ca) == (
            "/secrets/grpc-tls/tls.crt",
            "/secrets/grpc-tls/tls.key",
            "/secrets/grpc-tls/ca.crt",
        )
        assert mounted_secrets(d, component)["/secrets/grpc-tls"] == "pagoda-grpc-tls"
        # Kubelet's gRPC probes cannot speak TLS: they ask the plaintext health-only port.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container(d, component)[probe]["grpc"]["port"] == parsed.health_port == 50060
    router = deployment(manifests, "router")
    config = router_args(container(router, "router")["args"][1:])
    assert (config.tls_cert, config.tls_key) == ("/secrets/router-tls/tls.crt", "/secrets/router-tls/tls.key")
    assert (config.grpc_tls_ca, config.grpc_tls_cert, config.grpc_tls_key) == (
        "/secrets/grpc-tls/ca.crt",
        "/secrets/grpc-tls/tls.crt",
        "/secrets/grpc-tls/tls.key",
    )
    assert config.grpc_tls_server_name == "pagoda-grpc.llm.svc"
    assert mounted_secrets(router, "router") == {
        "/secrets/api-keys": "pagoda-api-keys",
        "/secrets/router-tls": "pagoda-router-tls",
        "/secrets/grpc-tls": "pagoda-grpc-tls",
        "/secrets/grpc-token": "pagoda-grpc-token",  # grpcAuth: the gRPC token, on beside TLS by default
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert container(router, "router")[probe]["httpGet"]["scheme"] == "HTTPS"
    # Each model's own tokenizer Service (the default values serve one model).
    assert dict(config.model_tokenizers) == {"SmolLM2-135M-Instruct": "pagoda-tokenizer-smollm2:50052"}


@pytest.mark.parametrize("version", ["1.29", "1.32"])
def test_tls_manifests_are_valid_kubernetes(manifests, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for m in manifests:
        if m["kind"] in ("ServiceMonitor", "ScaledObject"):
            continue
        kubernetes_validate.validate(m, version, strict=True)


def test_grpc_tls_without_a_secret_fails_to_render(manifests, tmp_path):
    helm = (
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "fetch_helm.sh")], capture_output=True, text=True, timeout=300
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    values = tmp_path / "values.yaml"
    values.write_text("tls:\n  grpc:\n    enabled: true\n")
    proc = run_helm(helm, *template_args(CHART, values))
    assert proc.returncode != 0 and "tls.grpc.secretName" in proc.stderr
