"""What makes the deployment work: GPUs, shared memory, probes, drain, discovery, RBAC, security."""

from __future__ import annotations

import pytest
import yaml

from pagoda.cli import COMMANDS
from pagoda.models import DEFAULT_MODEL_NAME, served_model_name

from .chartlib import (
    CHART,
    NAMESPACE,
    VALUES_CASES,
    VALUES_IDS,
    ci_values,
    container,
    flag,
    flags,
    load_manifests,
    pod_spec,
    run_helm,
    template_args,
)


def _models(values) -> list[dict]:
    source = CHART / "values.yaml" if values is None else values
    models = yaml.safe_load(source.read_text()).get("models")
    return models or yaml.safe_load((CHART / "values.yaml").read_text())["models"]


def _gpu_enabled(values) -> bool:
    data = yaml.safe_load(values.read_text()) if values else {}
    return data.get("gpu", {}).get("enabled", True)


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_one_engine_deployment_per_model_with_its_gpus(render, values):
    engines = {e["metadata"]["labels"]["pagoda.dev/model"]: e for e in render(values).deployments("engine")}
    models = _models(values)
    assert sorted(engines) == sorted(m["name"] for m in models)
    for model in models:
        engine = engines[model["name"]]
        tp = model.get("tensorParallelSize", 1)
        args = container(engine, "engine")["args"]
        assert flag(args, "--tensor-parallel-size") == str(tp)
        assert flag(args, "--served-model-name") == (model.get("servedModelName") or model["name"])
        resources = container(engine, "engine")["resources"]
        if _gpu_enabled(values):
            assert resources["limits"]["nvidia.com/gpu"] == tp
            assert resources["requests"]["nvidia.com/gpu"] == tp
            assert flag(args, "--device") == "cuda"
        else:
            assert "nvidia.com/gpu" not in resources.get("limits", {})
            assert flag(args, "--device") == "cpu"
            assert "runtimeClassName" not in pod_spec(engine)


def test_tensor_parallel_two(render):
    (engine,) = render(ci_values("gpu-tp2")).deployments("engine")
    spec = pod_spec(engine)
    main = container(engine, "engine")
    assert main["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "96Gi"}
    assert main["resources"]["requests"] == {"nvidia.com/gpu": 2, "cpu": "8", "memory": "64Gi"}
    assert engine["spec"]["replicas"] == 2
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["priorityClassName"] == "inference-critical"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    # Weights from the PVC's sub-folder, read-only, at /models/<name>.
    (weights,) = [v for v in spec["volumes"] if v["name"] == "model"]
    assert weights["persistentVolumeClaim"] == {"claimName": "llama-weights", "readOnly": True}
    (mount,) = [m for m in main["volumeMounts"] if m["name"] == "model"]
    assert mount == {"name": "model", "mountPath": "/models/llama-3-8b", "readOnly": True,
                     "subPath": "Llama-3.1-8B-Instruct"}  # fmt: skip
    assert flag(main["args"], "--model") == "/models/llama-3-8b"
    assert main["args"][-2:] == ["--max-model-len=8192", "--gpu-memory-utilization=0.92"]
    (cache,) = [v for v in spec["volumes"] if v["name"] == "model-cache"]
    assert cache["persistentVolumeClaim"] == {"claimName": "pagoda-model-cache"}


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_engine_pods_mount_memory_backed_shm_and_a_writable_cache(render, values):
    for engine in render(values).deployments("engine"):
        spec = pod_spec(engine)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(engine, "engine")["volumeMounts"]}
        assert mounts["/dev/shm"] == "dshm"
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["dshm"]["emptyDir"]["sizeLimit"]
        cache_dir = flag(container(engine, "engine")["args"], "--model-cache-dir")
        assert mounts[cache_dir] == "model-cache"


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_grpc_probes_and_drain(render, values):
    rendered = render(values)
    for engine in rendered.deployments("engine") + rendered.deployments("tokenizer"):
        main = pod_spec(engine)["containers"][0]
        grpc_port = next(p["containerPort"] for p in main["ports"] if p["name"] == "grpc")
        assert flag(main["args"], "--port") == str(grpc_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["grpc"]["port"] == grpc_port, probe
            assert "httpGet" not in main[probe] and "exec" not in main[probe]
        sleep = main["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        grace = pod_spec(engine)["terminationGracePeriodSeconds"]
        if main["name"] == "engine":
            drain = int(flag(main["args"], "--shutdown-grace-period"))
            assert grace > int(sleep[1]) + drain, "SIGKILL must wait for preStop plus the engine's drain"
            startup = main["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "room to load weights"
        else:
            assert grace > int(sleep[1])


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_router_discovers_exactly_the_engines(render, values):
    rendered = render(values)
    (router,) = rendered.deployments("router")
    args = container(router, "router")["args"]
    service = rendered.get("Service", flag(args, "--k8s-service"))
    assert service["spec"]["clusterIP"] == "None", "discovery needs a headless Service"
    assert flag(args, "--k8s-namespace") == NAMESPACE
    selector = dict(kv.split("=", 1) for kv in flag(args, "--k8s-label-selector").split(","))
    # The EndpointSlice controller copies the Service's labels onto its slices.
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    engines = rendered.deployments("engine")
    assert engines
    for engine in engines:
        pod_labels = engine["spec"]["template"]["metadata"]["labels"]
        match = engine["spec"]["selector"]["matchLabels"]
        assert match.items() <= pod_labels.items(), "a Deployment's selector must match its pods"
        assert selector.items() <= pod_labels.items(), "the Service and the router must see every engine"
        grpc = next(p for p in container(engine, "engine")["ports"] if p["name"] == "grpc")
        assert flag(args, "--k8s-engine-port") == str(grpc["containerPort"])
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["port"] == int(flag(args, "--k8s-engine-port"))
    # Nothing that is not an engine carries the engine selector.
    others = [d for d in rendered.of_kind("Deployment") if d not in engines]
    for other in others:
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_router_reaches_each_models_own_tokenizer_service(render, values):
    """One tokenizer Deployment and headless Service per model; the router names each model's own with
    `--tokenizer=SERVED_NAME=SERVICE:PORT`, and each tokenizer loads that model's files."""
    rendered = render(values)
    (router,) = rendered.deployments("router")
    routes = dict(v.rsplit("=", 1) for v in flags(container(router, "router")["args"], "--tokenizer"))
    tokenizers = {d["metadata"]["labels"]["pagoda.dev/model"]: d for d in rendered.deployments("tokenizer")}
    engines = {e["metadata"]["labels"]["pagoda.dev/model"]: e for e in rendered.deployments("engine")}
    models = _models(values)
    assert sorted(tokenizers) == sorted(engines) == sorted(m["name"] for m in models)
    assert len(routes) == len(models), "one --tokenizer per model, none without a model"
    for model in models:
        served = model.get("servedModelName") or model["name"]
        tokenizer = tokenizers[model["name"]]
        host, port = routes[served].rsplit(":", 1)
        service = rendered.get("Service", host)
        assert service["spec"]["clusterIP"] == "None"
        selected = [
            d
            for d in rendered.deployments("tokenizer")
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected == [tokenizer], f"{host} must select {model['name']}'s tokenizer alone"  # fmt: skip
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == int(port)
        assert flag(container(tokenizer, "tokenizer")["args"], "--port") == port
        # The tokenizer reads its model's files: the engine's own path unless tokenizerSource says otherwise.
        engine_model = flag(container(engines[model["name"]], "engine")["args"], "--model")
        tokenizer_model = flag(container(tokenizer, "tokenizer")["args"], "--model")
        if "tokenizerSource" not in model:
            assert tokenizer_model == (engine_model or f"/opt/pagoda/tokenizers/{DEFAULT_MODEL_NAME}")


def test_pods_run_real_pagoda_commands(render):
    # The engine image's entrypoint is `pagoda engine`; the router image's is `pagoda` with the
    # sub-command as the first argument.
    for values in (None, ci_values("two-models")):
        rendered = render(values)
        for component in ("router", "tokenizer"):
            for deployment in rendered.deployments(component):
                assert container(deployment, component)["args"][0] == component
            assert component in COMMANDS
        for engine in rendered.deployments("engine"):
            assert "command" not in container(engine, "engine")
            assert container(engine, "engine")["args"][0].startswith("--")


def test_router_rbac_is_read_only_on_endpointslices(defaults):
    (router,) = defaults.deployments("router")
    account = pod_spec(router)["serviceAccountName"]
    (role,) = defaults.of_kind("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (binding,) = defaults.of_kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert not defaults.of_kind("ClusterRole") and not defaults.of_kind("ClusterRoleBinding")
    # Only the router gets an API token.
    for deployment in defaults.of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is (deployment is router)
        if deployment is not router:
            assert spec["serviceAccountName"] != account


def test_router_and_tokenizer_scale_on_cpu_and_survive_drains(defaults):
    for component in ("router", "tokenizer"):
        (deployment,) = defaults.deployments(component)
        name = deployment["metadata"]["name"]
        hpa = defaults.get("HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert container(deployment, component)["resources"]["requests"]["cpu"], "CPU HPA needs a request"
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        pdb = defaults.get("PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1


def test_fixed_replicas_without_hpa(render):
    rendered = render(ci_values("no-network-policy"))
    for component in ("router", "tokenizer"):
        (deployment,) = rendered.deployments(component)
        assert deployment["spec"]["replicas"] == 3
    assert not rendered.of_kind("HorizontalPodAutoscaler")


def api_key_secrets(rendered) -> list[dict]:
    """The Secrets the chart makes, but for the gRPC token's (grpcAuth: test_chart_render.py)."""
    return [s for s in rendered.of_kind("Secret") if not s["metadata"]["name"].endswith("-grpc-token")]


def test_api_keys_come_from_a_secret(render, defaults):
    (router,) = defaults.deployments("router")
    main = container(router, "router")
    (secret,) = api_key_secrets(defaults)
    key_file = flag(main["args"], "--api-key-file")
    (volume,) = [v for v in pod_spec(router)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in main["volumeMounts"] if m["name"] == "api-keys"]
    assert key_file == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert set(secret["data"]) == {volume["secret"]["items"][0]["key"]}

    rendered = render(ci_values("no-network-policy"))
    (router,) = rendered.deployments("router")
    assert not api_key_secrets(rendered), "an existing Secret is used, not made"
    (volume,) = [v for v in pod_spec(router)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "team-api-keys"
    assert flag(container(router, "router")["args"], "--api-key-file") == "/secrets/api-keys/keys.txt"


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_no_root_no_privilege_read_only_root(render, values):
    for deployment in render(values).of_kind("Deployment"):
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for c in spec["containers"] + spec.get("initContainers", []):
            security = c["securityContext"]
            assert security["privileged"] is False
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c in spec["containers"]:
                assert {"/tmp", "/home/pagoda"} <= mounts, "writable scratch on a read-only root"


def test_network_policies_let_only_the_router_reach_engines_and_tokenizer(defaults):
    (router,) = defaults.deployments("router")
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in defaults.of_kind("NetworkPolicy")
    }
    assert set(policies) == {"engine", "tokenizer"}
    for component, port in (("engine", 50051), ("tokenizer", 50052)):
        policy = policies[component]
        for deployment in defaults.deployments(component):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        grpc_rules = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in r["ports"]]
        assert len(grpc_rules) == 1
        (peer,) = grpc_rules[0]["from"]
        assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
        assert "namespaceSelector" not in peer, "the router of this namespace only"


def test_network_policy_can_be_turned_off(render):
    assert not render(ci_values("no-network-policy")).of_kind("NetworkPolicy")


def test_weights_from_an_image_or_an_object_store(render):
    rendered = render(ci_values("two-models"))
    engines = {e["metadata"]["labels"]["pagoda.dev/model"]: e for e in rendered.deployments("engine")}
    (copy,) = pod_spec(engines["qwen-7b"])["initContainers"]
    assert copy["image"] == "registry.example.com/models/qwen2.5-7b-instruct:1"
    assert copy["command"] == ["cp", "-R", "/model/.", "/models/qwen-7b/"]
    (fetch,) = pod_spec(engines["mistral-7b"])["initContainers"]
    assert fetch["command"][:3] == ["aws", "s3", "sync"]
    assert fetch["command"][-2:] == ["s3://models/mistral-7b-instruct-v0.3", "/models/mistral-7b"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "model-store-credentials"}}]
    for name, engine in engines.items():
        (init,) = pod_spec(engine)["initContainers"]
        (weights,) = [v for v in pod_spec(engine)["volumes"] if v["name"] == "model"]
        assert "emptyDir" in weights
        assert any(m["name"] == "model" and not m.get("readOnly") for m in init["volumeMounts"])
        assert flag(container(engine, "engine")["args"], "--model") == f"/models/{name}"
    # Qwen's tokenizer reads its own small hostPath folder instead of copying the weights; Mistral's
    # syncs only the tokenizer's files out of the store.
    tokenizers = {d["metadata"]["labels"]["pagoda.dev/model"]: d for d in rendered.deployments("tokenizer")}
    qwen = tokenizers["qwen-7b"]
    assert "initContainers" not in pod_spec(qwen)
    (weights,) = [v for v in pod_spec(qwen)["volumes"] if v["name"] == "model"]
    assert weights["hostPath"]["path"] == "/var/lib/pagoda/tokenizers/qwen2.5-7b-instruct"
    assert flag(container(qwen, "tokenizer")["args"], "--model") == "/models/qwen-7b"
    (sync,) = pod_spec(tokenizers["mistral-7b"])["initContainers"]
    assert sync["command"][:3] == ["aws", "s3", "sync"] and "--exclude=*" in sync["command"]
    assert {"--include=*.json", "--include=*.jinja", "--include=tokenizer.model"} <= set(sync["command"])
    assert not any("safetensors" in arg for arg in sync["command"])
    assert flag(container(tokenizers["mistral-7b"], "tokenizer")["args"], "--model") == "/models/mistral-7b"


def test_builtin_model_tokenizer_is_in_the_router_image(defaults):
    # The router image exports the built-in model (without weights) to /opt/pagoda/tokenizers/<name>,
    # a folder that pagoda.models.resolve_model takes as is; its name is the served model name.
    (tokenizer,) = defaults.deployments("tokenizer")
    model = flag(container(tokenizer, "tokenizer")["args"], "--model")
    assert model == f"/opt/pagoda/tokenizers/{DEFAULT_MODEL_NAME}"
    assert served_model_name(model) == DEFAULT_MODEL_NAME
    (engine,) = defaults.deployments("engine")
    assert flag(container(engine, "engine")["args"], "--served-model-name") == DEFAULT_MODEL_NAME
    dockerfile = (CHART.parents[1] / "Dockerfile.router").read_text()
    assert "Path('/opt/pagoda/tokenizers') / DEFAULT_MODEL_NAME" in dockerfile
    assert "COPY --from=tokenizer-export /opt/pagoda/tokenizers /opt/pagoda/tokenizers" in dockerfile


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_each_models_engines_and_tokenizers_drain_one_at_a_time(render, values):
    """A PodDisruptionBudget per model for its engines (maxUnavailable 1 unless the model says otherwise)
    and for its tokenizers: `kubectl drain` of the nodes of two engines evicts one, then waits."""
    rendered = render(values)
    models = {m["name"]: m for m in _models(values)}
    given = yaml.safe_load(values.read_text()) if values else {}
    for component in ("engine", "tokenizer"):
        if not given.get(component, {}).get("pdb", {}).get("enabled", True):
            assert not [
                p for p in rendered.of_kind("PodDisruptionBudget") if component in p["metadata"]["name"]
            ]
            continue
        for deployment in rendered.deployments(component):
            model = deployment["metadata"]["labels"]["pagoda.dev/model"]
            pdb = rendered.get("PodDisruptionBudget", deployment["metadata"]["name"])
            assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
            # The budget covers this model's pods and no other model's.
            others = [d for d in rendered.deployments(component) if d is not deployment]
            for other in others:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
            expected = models[model].get("pdb", {}).get("maxUnavailable", 1) if component == "engine" else 1
            assert pdb["spec"]["maxUnavailable"] == expected


def test_engine_pdb_per_model_override_and_off(render, helm, tmp_path):
    rendered = render(ci_values("weights-pvc"))
    budgets = {
        p["metadata"]["name"]: p["spec"]["maxUnavailable"] for p in rendered.of_kind("PodDisruptionBudget")
    }
    assert budgets["pagoda-engine-llama-3-8b"] == 1 and budgets["pagoda-engine-qwen-0-5b"] == 2
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"engine": {"pdb": {"enabled": False}}}))
    proc = run_helm(helm, *template_args(CHART, path))
    assert proc.returncode == 0, proc.stderr
    names = {m["metadata"]["name"] for m in load_manifests(proc.stdout) if m["kind"] == "PodDisruptionBudget"}
    assert names == {"pagoda-router", "pagoda-tokenizer-smollm2"}


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_rollout_deadline_outlasts_the_startup_probe(render, values):
    """A rollout is reported failed after progressDeadlineSeconds: it must outlast the start-up probe's
    window (30 minutes of loading by default), or a model still loading reads as a failed rollout."""
    for engine in render(values).deployments("engine"):
        startup = container(engine, "engine")["startupProbe"]
        window = startup["periodSeconds"] * startup["failureThreshold"]
        assert engine["spec"]["progressDeadlineSeconds"] >= window + 300, engine["metadata"]["name"]
