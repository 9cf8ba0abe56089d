"""Lab 8's pipeline files pass the linters the lab uses, and the linters catch what the lab says.

The lab's hidden tests trust three real tools to tell a good workflow from a bad one:
check-jsonschema (SchemaStore's schema of GitHub workflow files), zizmor (GitHub Actions
security audits, offline) and hadolint (Dockerfiles). These tests check, without running the
notebook, that the reference workflow in the solution passes all of them, that each rule
the lab teaches has a tool that fails when it is broken, and that the shipped kustomize
overlays render and validate.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from labtools import source_notebook

from dlcloud import kube
from dlcloud_course.labs import find

LAB = "lab8-continuous-deployment"
# Spawns check-jsonschema, zizmor and hadolint a dozen times (half a minute): make test, not make check.
pytestmark = pytest.mark.slow
LAB_DIR = find(LAB).source.parent
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"


def reference_workflow() -> str:
    """The WORKFLOW string of the solution cell, evaluated as the notebook would."""
    (cell,) = [c for c in source_notebook(LAB).cells if c.get("id") == "deploy-workflow"]
    namespace: dict = {}
    exec(cell.source, namespace)  # noqa: S102 - the lab's own solution cell: one string assignment
    return namespace["WORKFLOW"]


def schema_ok(path: Path) -> bool:
    result = subprocess.run([kube.tool_path("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(path)], capture_output=True, text=True, timeout=180)
    return result.returncode == 0


def zizmor_findings(path: Path) -> set[str]:
    result = subprocess.run([kube.tool_path("zizmor"), "--offline", "--no-progress", "--format", "json",
                             "--min-severity", "low", str(path)], capture_output=True, text=True, timeout=120)
    return {finding["ident"] for finding in json.loads(result.stdout or "[]")}


def hadolint(path: Path) -> set[str]:
    result = subprocess.run([kube.tool_path("hadolint"), "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60)
    return {problem["code"] for problem in json.loads(result.stdout or "[]")}


@pytest.fixture(scope="module")
def workflow() -> str:
    return reference_workflow()


def write(tmp_path: Path, text: str, name: str = "deploy.yml") -> Path:
    path = tmp_path / ".github" / "workflows" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_reference_workflow_passes_schema_and_zizmor(workflow, tmp_path):
    path = write(tmp_path, workflow)
    assert schema_ok(path), "the solution's deploy.yml must match SchemaStore's workflow schema"
    assert zizmor_findings(path) == set(), "the solution's deploy.yml must have no zizmor finding of low or above"


def test_reference_workflow_has_the_jobs_and_gates_the_lab_asks_for(workflow):
    parsed = yaml.safe_load(workflow)
    jobs = parsed["jobs"]
    assert list(jobs) == ["test", "build", "deploy-staging", "deploy-production"]
    assert parsed["permissions"] == {}
    assert jobs["deploy-production"]["environment"] == "production"
    assert "kubectl apply -k k8s/overlays/production" in workflow


@pytest.mark.parametrize(("mistake", "replace", "with_", "finding"), [
    ("action pinned by tag", CHECKOUT, "actions/checkout@v4", "unpinned-uses"),
    ("credentials left in the checkout", "\n        with:\n          persist-credentials: false", "", "artipacked"),
    ("attacker-controlled text in a script", "pip install --require-hashes -r requirements.lock",
     'echo "${{ github.event.pull_request.title }}"', "template-injection"),
])
def test_zizmor_flags_each_supply_chain_mistake(workflow, tmp_path, mistake, replace, with_, finding):
    assert replace in workflow, f"the reference workflow no longer contains {replace!r}: update this test"
    path = write(tmp_path, workflow.replace(replace, with_, 1))
    assert finding in zizmor_findings(path), f"zizmor must flag {mistake} as {finding}"


def test_schema_rejects_a_misspelt_key(workflow, tmp_path):
    assert not schema_ok(write(tmp_path, workflow.replace("runs-on:", "runs_on:", 1))), "runs_on must fail the schema"


def test_shipped_dockerfile_is_hadolint_clean_and_hadolint_catches_latest(tmp_path):
    assert hadolint(LAB_DIR / "Dockerfile") == set(), "the lab's Dockerfile must pass hadolint"
    bad = tmp_path / "Dockerfile"
    bad.write_text((LAB_DIR / "Dockerfile").read_text().replace("python:3.11-slim-bookworm", "python:latest"))
    assert "DL3007" in hadolint(bad), "hadolint must flag an image pinned to latest (DL3007)"


@pytest.mark.parametrize(("overlay", "replicas"), [("staging", 1), ("production", 3)])
def test_overlays_render_and_validate(overlay, replicas):
    objects = kube.kustomize(LAB_DIR / "k8s" / "overlays" / overlay)
    by_kind = {obj["kind"]: obj for obj in objects}
    assert set(by_kind) == {"Deployment", "Service"}
    assert by_kind["Deployment"]["metadata"]["namespace"] == f"payout-{overlay}"
    assert by_kind["Deployment"]["spec"]["replicas"] == replicas
    assert kube.validate(objects) == [], f"overlays/{overlay} must validate against the Kubernetes schema"
