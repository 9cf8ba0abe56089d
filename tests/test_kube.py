"""Unit tests of dlcloud.kube: the real kubectl kustomize and kubernetes-validate, no cluster."""

from __future__ import annotations

import pytest
from kubernetes import client

from dlcloud import kube

BAD_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: "two"
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: web:1.0
          ports: [{containerPort: 8080, protocl: TCP}]
"""


def good_deployment() -> client.V1Deployment:
    container = client.V1Container(name="web", image="web:1.0",
                                   ports=[client.V1ContainerPort(name="http", container_port=8080)])
    return client.V1Deployment(
        api_version="apps/v1", kind="Deployment", metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "web"}),
                                              spec=client.V1PodSpec(containers=[container]))))


def test_to_manifest_uses_the_api_field_names():
    manifest = kube.to_manifest(good_deployment())
    port = manifest["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert port == {"name": "http", "containerPort": 8080}, f"camelCase, no None fields: {port}"
    assert kube.to_manifest({"kind": "X"}) == {"kind": "X"}, "plain dicts pass through"


def test_yaml_round_trip(tmp_path):
    path = kube.write_yaml(tmp_path / "sub" / "web.yaml", [good_deployment(), {"kind": "X"}])
    docs = kube.load_yaml(path.read_text())
    assert [d["kind"] for d in docs] == ["Deployment", "X"]
    assert list(docs[0]) == ["apiVersion", "kind", "metadata", "spec"], "keys keep the API's order"


def test_a_valid_deployment_has_no_problem():
    assert kube.validate([good_deployment()]) == []


def test_every_problem_is_reported_with_its_field_path():
    problems = kube.validate(kube.load_yaml(BAD_DEPLOYMENT))
    fields = {p.field for p in problems}
    assert "spec.replicas" in fields, f"the string where an integer belongs: {problems}"
    assert "spec.template.spec.containers.0.ports.0.protocl" in fields, f"the unknown field: {problems}"
    assert all(p.kind == "Deployment" and p.name == "web" for p in problems)
    assert "Deployment/web: spec.replicas:" in str(next(p for p in problems if p.field == "spec.replicas"))


def test_unknown_fields_pass_without_strict():
    fields = {p.field for p in kube.validate(kube.load_yaml(BAD_DEPLOYMENT), strict=False)}
    assert fields == {"spec.replicas"}, fields


def test_unknown_kind_and_missing_kind_are_problems():
    unknown = kube.validate([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}])
    assert len(unknown) == 1 and unknown[0].field == "apiVersion", unknown
    assert kube.validate([{"metadata": {"name": "x"}}])[0].message == "apiVersion and kind are required"


def test_the_validate_command_fails_on_a_bad_file_and_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_DEPLOYMENT)
    ok, report = kube.validate_files([bad])
    assert not ok and any("spec.replicas" in line for line in report), report
    good = kube.write_yaml(tmp_path / "good.yaml", [good_deployment()])
    ok, report = kube.validate_files([good])
    assert ok, report


def test_kustomize_renders_an_overlay(tmp_path):
    kube.write_yaml(tmp_path / "base" / "web.yaml", [good_deployment()])
    kube.write_yaml(tmp_path / "base" / "kustomization.yaml", [{"resources": ["web.yaml"]}])
    kube.write_yaml(tmp_path / "overlay" / "kustomization.yaml", [{
        "resources": ["../base"], "namespace": "shop",
        "images": [{"name": "web", "newName": "registry.example/web", "newTag": "2.0"}],
        "replicas": [{"name": "web", "count": 5}]}])
    (rendered,) = kube.kustomize(tmp_path / "overlay")
    assert rendered["metadata"]["namespace"] == "shop"
    assert rendered["spec"]["replicas"] == 5
    assert rendered["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:2.0"


def test_kustomize_reports_its_own_error(tmp_path):
    kube.write_yaml(tmp_path / "kustomization.yaml", [{"resources": ["missing.yaml"]}])
    with pytest.raises(kube.KubeToolError, match="missing.yaml"):
        kube.kustomize(tmp_path)


def test_tool_path_explains_a_missing_tool():
    with pytest.raises(kube.KubeToolError, match="no-such-tool"):
        kube.tool_path("no-such-tool")


def test_no_cluster_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    cluster, reason = kube.cluster_or_reason(timeout_s=1)
    assert cluster is None
    assert "minikube start" in reason and "kind create cluster" in reason, reason


def test_a_cluster_that_does_not_answer_is_no_cluster(tmp_path, monkeypatch):
    # A kubeconfig naming a loopback port where nothing listens: connection refused.
    from dlcloud import net

    port = net.free_port()
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: ctx, context: {{cluster: c, user: u}}}}]
current-context: ctx
""")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(kube.NoCluster, match="did not answer") as caught:
        kube.connect(timeout_s=2)
    assert "'ctx'" in str(caught.value) and "minikube start" in str(caught.value)


def test_check_command_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert kube.main(["check"]) == 1
    assert "kind create cluster" in capsys.readouterr().out
    assert kube.main([]) == 2


def test_progress_bar():
    assert kube._progress_bar(1, 4, width=8) == "[##......] 1/4"
    assert kube._progress_bar(0, 0, width=4) == "[....] 0/0"
