"""Lab 3's live section on a real cluster: `make lab3-live` (skipped, saying why, without one).

It runs the solution of lab 3 from top to bottom with nbclient against the cluster that
KUBECONFIG names: a throwaway namespace, server-side apply, rollouts, a port-forward, a
scale-up and a rolling update while a client calls. The cluster needs the images
dlcloud/insurance-service:1.0.0 and :1.0.1 (lab 2's image with the flights at
/data/flights.csv.zip), loaded with `minikube image load` or `kind load docker-image`.
"""

from __future__ import annotations

import pytest

from dlcloud import kube

LAB = "lab3-kubernetes"

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    found, reason = kube.cluster_or_reason()
    if found is None:
        pytest.skip(f"no Kubernetes cluster answered: {reason}")
    return found


def _lab_notebook(repo_root):
    """The rendered solution notebook (the .py source through the course's renderer)."""
    source = repo_root / "solutions" / LAB / f"{LAB}.py"
    try:
        from dlcloud_course.render import read_lab_notebook
    except ImportError:
        pytest.skip("dlcloud_course.render (the lab renderer) is not installed")
    return read_lab_notebook(source)


def test_live_section_deploys_scales_and_rolls_without_a_failed_call(cluster, repo_root):
    from nbclient import NotebookClient

    notebook = _lab_notebook(repo_root)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(repo_root / "solutions" / LAB)}}).execute()
    outputs = {cell.id: "".join(o.get("text", "") for o in cell.get("outputs", []))
               for cell in notebook.cells if cell.cell_type == "code"}
    assert "namespace deleted" in outputs["live-deploy-and-roll"], outputs["live-deploy-and-roll"]
    assert " failed" in outputs["live-check"] and "Skipped" not in outputs["live-check"], outputs["live-check"]
