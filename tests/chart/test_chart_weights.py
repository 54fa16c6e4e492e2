"""Where the weights come from: an existing claim, a Hugging Face download Job into a claim, an image
volume. Each example values file renders (and validates, in test_chart_render.py) and mounts the weights
read-only where the engine's `--model` points; engines start with no network."""

from __future__ import annotations

import pytest
import yaml

from .chartlib import CHART, ci_values, container, flag, pod_spec, run_helm, template_args

MARKER = ".pagoda-complete"  # pagoda/download.py writes it last


def _by_model(deployments: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["labels"]["pagoda.dev/model"]: d for d in deployments}


def _volume(deployment: dict, name: str = "model") -> dict:
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == name]
    return volume


def _mount(deployment: dict, component: str, name: str = "model") -> dict:
    (mount,) = [m for m in container(deployment, component)["volumeMounts"] if m["name"] == name]
    return mount


def _env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def test_existing_read_only_many_claim(render):
    rendered = render(ci_values("weights-pvc"))
    assert not rendered.of_kind("Job") and not rendered.of_kind("PersistentVolumeClaim"), "the claim exists"
    engines, tokenizers = (
        _by_model(rendered.deployments("engine")),
        _by_model(rendered.deployments("tokenizer")),
    )
    for name, folder in (("llama-3-8b", "Llama-3.1-8B-Instruct"), ("qwen-0-5b", "Qwen2.5-0.5B-Instruct")):
        for deployment, component in ((engines[name], "engine"), (tokenizers[name], "tokenizer")):
            assert _volume(deployment)["persistentVolumeClaim"] == {
                "claimName": "shared-model-weights",
                "readOnly": True,
            }
            assert _mount(deployment, component) == {
                "name": "model", "mountPath": f"/models/{name}", "readOnly": True, "subPath": folder,
            }  # fmt: skip
            assert flag(container(deployment, component)["args"], "--model") == f"/models/{name}"
            assert "initContainers" not in pod_spec(deployment), "nothing is copied"


def test_hugging_face_download_job_and_claim(render):
    rendered = render(ci_values("weights-huggingface"))
    jobs = _by_model(rendered.of_kind("Job"))
    assert sorted(jobs) == ["llama-3-8b", "qwen-0-5b"]
    # The chart makes a claim for the model that names none, and keeps it on uninstall.
    (claim,) = rendered.of_kind("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "pagoda-weights-llama-3-8b"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    assert claim["spec"]["resources"]["requests"]["storage"] == "40Gi"
    claims = {"llama-3-8b": "pagoda-weights-llama-3-8b", "qwen-0-5b": "team-model-weights"}
    engines, tokenizers = (
        _by_model(rendered.deployments("engine")),
        _by_model(rendered.deployments("tokenizer")),
    )
    for name, job in jobs.items():
        spec = job["spec"]["template"]["spec"]
        (download,) = spec["containers"]
        args = download["args"]
        assert args[0] == "download"  # `pagoda download` in the router image
        assert download["image"] == container(tokenizers[name], "tokenizer")["image"]
        repo, revision = flag(args, "--repo"), flag(args, "--revision")
        assert len(revision) == 40
        assert job["spec"]["backoffLimit"] == 20 and spec["restartPolicy"] == "OnFailure"
        (weights,) = [v for v in spec["volumes"] if v["name"] == "weights"]
        assert weights["persistentVolumeClaim"] == {"claimName": claims[name]}  # the one writer
        assert flag(args, "--dir") == f"/weights/{repo}/{revision}"
        assert spec["automountServiceAccountToken"] is False
        security = download["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["privileged"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        # Engines and the tokenizer read the same claim, read-only, after the Job's marker appears.
        for deployment, component in ((engines[name], "engine"), (tokenizers[name], "tokenizer")):
            assert _volume(deployment)["persistentVolumeClaim"] == {
                "claimName": claims[name],
                "readOnly": True,
            }
            assert _mount(deployment, component) == {
                "name": "model", "mountPath": f"/models/{name}", "readOnly": True
            }  # fmt: skip
            model_dir = flag(container(deployment, component)["args"], "--model")
            assert model_dir == f"/models/{name}/{repo}/{revision}"
            (wait,) = pod_spec(deployment)["initContainers"]
            assert (
                wait["name"] == "wait-weights" and wait["image"] == container(deployment, component)["image"]
            )
            assert _env(wait)["MARKER"] == f"{model_dir}/{MARKER}"
            assert all(m.get("readOnly") for m in wait["volumeMounts"])
            assert _env(container(deployment, component))["HF_HUB_OFFLINE"] == "1", "no network at run time"
    # The gated model's token comes from its Secret, as a file.
    llama = jobs["llama-3-8b"]["spec"]["template"]["spec"]
    (token,) = [v for v in llama["volumes"] if v["name"] == "hf-token"]
    assert token["secret"]["secretName"] == "hf-token"
    assert flag(llama["containers"][0]["args"], "--token-file") == "/secrets/hf-token/token"
    qwen = jobs["qwen-0-5b"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allow-pattern=merges.txt" in qwen and flag(qwen, "--token-file") is None


def test_a_new_revision_is_a_new_job(helm, tmp_path):
    """A Job's pod template is immutable: its name carries a hash of what it fetches, so `helm upgrade`
    to a new revision makes a new Job instead of failing on the old one."""
    values = yaml.safe_load(ci_values("weights-huggingface").read_text())

    def job_names(values: dict) -> set[str]:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        proc = run_helm(helm, *template_args(CHART, path, "--show-only", "templates/weights-download.yaml"))
        assert proc.returncode == 0, proc.stderr
        return {m["metadata"]["name"] for m in yaml.safe_load_all(proc.stdout) if m and m["kind"] == "Job"}

    before = job_names(values)
    assert job_names(values) == before, "the same values, the same Jobs"
    values["models"][0]["source"]["huggingFace"]["revision"] = "f" * 40
    after = job_names(values)
    assert len(before & after) == 1 and len(after) == 2
    assert all(len(name) <= 63 for name in after)


def test_image_volume_mounts_the_model_image_without_a_copy(render, helm):
    rendered = render(ci_values("weights-image-volume"))
    (engine,) = rendered.deployments("engine")
    (tokenizer,) = rendered.deployments("tokenizer")
    for deployment, component in ((engine, "engine"), (tokenizer, "tokenizer")):
        assert _volume(deployment)["image"] == {
            "reference": "registry.example.com/models/qwen2.5-7b-instruct@sha256:"
            "4b3c0c4cbf6c2a5e1f0e6d8a9b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c",
            "pullPolicy": "IfNotPresent",
        }
        assert _mount(deployment, component) == {
            "name": "model",
            "mountPath": "/models/qwen-7b",
            "readOnly": True,
        }
        assert flag(container(deployment, component)["args"], "--model") == "/models/qwen-7b/model"
        assert "initContainers" not in pod_spec(deployment)
    # Older clusters have no image volumes: the chart says so instead of rendering a pod they reject.
    proc = run_helm(
        helm, *template_args(CHART, ci_values("weights-image-volume"), "--kube-version", "1.30.0")
    )
    assert proc.returncode != 0
    assert "imageVolume needs Kubernetes >= 1.31" in proc.stderr


QWEN = "Qwen/Qwen2.5-7B-Instruct"
BAD_SOURCES = {
    "hf-without-repo": ({"type": "huggingFace"}, "huggingFace"),
    "hf-without-revision": ({"type": "huggingFace", "huggingFace": {"repo": QWEN}}, "revision"),
    "hf-branch-not-commit": (
        {"type": "huggingFace", "huggingFace": {"repo": QWEN, "revision": "main"}},
        "revision",
    ),
    "hf-bad-repo": (
        {"type": "huggingFace", "huggingFace": {"repo": "no-owner", "revision": "a" * 40}},
        "repo",
    ),
    "image-volume-without-image": ({"type": "imageVolume"}, "image"),
    "image-volume-bad-digest": (
        {"type": "imageVolume", "image": {"repository": "r", "digest": "latest"}},
        "digest",
    ),
}


@pytest.mark.parametrize("source, fragment", list(BAD_SOURCES.values()), ids=list(BAD_SOURCES))
def test_schema_refuses_incomplete_weight_sources(helm, tmp_path, source, fragment):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "source": source}]}))
    proc = run_helm(helm, *template_args(CHART, path))
    assert proc.returncode != 0, f"accepted: {source}"
    assert "values don't meet the specifications of the schema" in proc.stderr and fragment in proc.stderr


def test_notes_say_where_the_download_and_the_tokenizers_are(helm):
    from .chartlib import render_notes

    notes = render_notes(helm, ci_values("weights-huggingface"))
    logs = "kubectl -n llm logs -f -l app.kubernetes.io/component=weights,pagoda.dev/model=llama-3-8b"
    assert logs in notes
    assert "deployment/pagoda-tokenizer-<model>" in render_notes(helm, ci_values("two-models"))
