"""The chart lints, renders with every values file, and every manifest is valid Kubernetes.

Kinds from CRDs (ScaledObject, ServiceMonitor, HTTPRoute) have no schema in kubernetes-validate:
their tests assert the fields that make them work.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from .chartlib import (
    CHART,
    NAMESPACE,
    VALUES_CASES,
    VALUES_IDS,
    ci_values,
    flag,
    pod_spec,
    render_notes,
    run_helm,
    template_args,
)

KUBE_VERSIONS = ["1.29.0", "1.32.0"]
# Values files that need a newer Kubernetes than the chart's floor (the chart refuses older ones).
NEWER_KUBE_VERSIONS = {"weights-image-volume-values.yaml": ["1.31.0", "1.32.0"]}  # image volumes: 1.31
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "HTTPRoute"}


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_helm_lint_strict(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_manifests_validate_strictly(render, values):
    manifests = render(values).manifests
    assert manifests
    versions = NEWER_KUBE_VERSIONS.get(values.name, KUBE_VERSIONS) if values else KUBE_VERSIONS
    for manifest in manifests:
        assert manifest["metadata"].get("namespace") == NAMESPACE, manifest["metadata"]["name"]
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                name = f"{manifest['kind']}/{manifest['metadata']['name']}"
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {err}")


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_only_known_kinds(render, values):
    known = {
        "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
        "Job", "PersistentVolumeClaim",  # the `huggingFace` source's download and its claim
    } | CRD_KINDS  # fmt: skip
    kinds = {m["kind"] for m in render(values).manifests}
    assert kinds <= known, kinds - known
    names = [(m["kind"], m["metadata"]["name"]) for m in render(values).manifests]
    assert len(names) == len(set(names)), "two resources share a kind and name"


def test_kube_version_below_129_is_refused(helm):
    proc = run_helm(helm, *template_args(CHART, None, "--kube-version", "1.28.0"))
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr


def test_default_install_is_one_engine_on_one_gpu(defaults):
    (engine,) = defaults.deployments("engine")
    assert engine["spec"]["replicas"] == 1
    args = pod_spec(engine)["containers"][0]["args"]
    assert flag(args, "--model") is None, "the built-in model needs no weights volume"
    assert flag(args, "--tensor-parallel-size") == "1"
    assert flag(args, "--device") == "cuda"
    assert pod_spec(engine)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "initContainers" not in pod_spec(engine)
    # grpc-token: the shared gRPC token (grpcAuth, on by default: only the router may call engines).
    volumes = {v["name"] for v in pod_spec(engine)["volumes"]}
    assert volumes == {"dshm", "model-cache", "tmp", "home", "grpc-token"}
    assert flag(args, "--grpc-token-file") == "/secrets/grpc-token/token"


def test_keda_scaled_object(render):
    rendered = render(ci_values("keda"))
    engines = rendered.deployments("engine")
    scaled = rendered.of_kind("ScaledObject")
    assert len(scaled) == len(engines) == 1
    (obj,) = scaled
    (engine,) = engines
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert obj["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": engine["metadata"]["name"],
    }
    assert "replicas" not in engine["spec"], "the ScaledObject owns the replica count"
    assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"] == 8
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata must be strings"
    assert meta["serverAddress"].startswith("http://kube-prometheus-stack-prometheus.")
    served = flag(pod_spec(engine)["containers"][0]["args"], "--served-model-name")
    assert meta["query"] == (
        f'sum(pagoda:num_requests_waiting{{namespace="{NAMESPACE}",model_name="{served}"}})'
    )
    assert meta["threshold"] == "8"
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert not [h for h in rendered.of_kind("HorizontalPodAutoscaler") if "engine" in h["metadata"]["name"]]


def test_custom_metric_hpa(render):
    rendered = render(ci_values("hpa-custom-metric"))
    (engine,) = rendered.deployments("engine")
    name = engine["metadata"]["name"]
    hpa = rendered.get("HorizontalPodAutoscaler", name)
    assert "replicas" not in engine["spec"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "pagoda_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "6"}
    assert not rendered.of_kind("ScaledObject")


def test_engine_autoscalers_are_off_by_default(defaults):
    assert not defaults.of_kind("ScaledObject")
    names = {h["spec"]["scaleTargetRef"]["name"] for h in defaults.of_kind("HorizontalPodAutoscaler")}
    assert names == {"pagoda-router", "pagoda-tokenizer-smollm2"}
    assert not defaults.of_kind("ServiceMonitor")
    assert not defaults.of_kind("ConfigMap")


def test_service_monitors_select_services_with_their_ports(render):
    rendered = render(ci_values("keda"))
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == {
        "engine", "router", "tokenizer",
    }  # fmt: skip
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in rendered.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def test_grafana_dashboard_is_json_on_engine_metrics(render):
    (config_map,) = render(ci_values("keda")).of_kind("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["pagoda.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("pagoda:num_requests_waiting" in e for e in exprs)
    assert any("pagoda:time_to_first_token_seconds_bucket" in e for e in exprs)


def test_http_route(render):
    rendered = render(ci_values("gateway"))
    (route,) = rendered.of_kind("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
    ]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    (backend,) = rule["backendRefs"]
    service = rendered.get("Service", backend["name"])
    assert backend["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert rule["timeouts"] == {"request": "3600s"}


def test_ingress_routes_to_the_router_service(render):
    rendered = render(ci_values("ingress"))
    (ingress,) = rendered.of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = rendered.get("Service", backend["name"])
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "router"


def test_notes_tell_how_to_reach_the_api(helm):
    notes = render_notes(helm, None)
    assert "kubectl -n llm port-forward svc/pagoda-router 8000:80" in notes
    assert "kubectl -n llm get secret pagoda-api-keys" in notes
    assert '"model": "SmolLM2-135M-Instruct"' in notes
    assert "scale deployment/pagoda-engine-smollm2" in notes
    ingress = render_notes(helm, ci_values("ingress"))
    assert "BASE_URL=https://llm.example.com/v1" in ingress


def test_grpc_token_is_shared_by_router_engines_and_tokenizer(defaults, render):
    """One Secret; engines and tokenizer accept its token, the router sends it; off, none of it."""
    (secret,) = [m for m in defaults.of_kind("Secret") if m["metadata"]["name"].endswith("-grpc-token")]
    name = secret["metadata"]["name"]
    for component in ("engine", "tokenizer", "router"):
        for deployment in defaults.deployments(component):
            spec = pod_spec(deployment)
            assert flag(spec["containers"][0]["args"], "--grpc-token-file") == "/secrets/grpc-token/token"
            (volume,) = [v for v in spec["volumes"] if v["name"] == "grpc-token"]
            assert volume["secret"]["secretName"] == name, component
