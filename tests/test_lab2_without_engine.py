"""Lab 2 where no Docker Engine answers (Binder): its checks say so, they do not blame the student.

The solution is run with ``DOCKER_HOST`` pointing at a socket where nothing listens. Every
graded cell that needs an engine must fail with the lab's "needs a Docker Engine" message
(and nothing else), and the cells that need no engine (the Dockerfile and hadolint) still pass.
"""

from __future__ import annotations

import pytest
from labtools import find, render_lab

ENGINE_CHECKS = {
    "image-runs-as-non-root",
    "container-becomes-healthy-and-answers",
    "code-only-rebuild-reuses-dependency-layers",
    "optimized-image-smaller-than-naive",
    "no-secret-in-any-layer",
}


@pytest.mark.slow
def test_checks_that_need_an_engine_say_that_none_answers(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    folder = render_lab(find("lab2-containers"), tmp_path)
    notebook = nbformat.read(folder / "lab2-containers.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(folder)}}).execute()
    graded = {c.id: c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")}
    errors = {cell_id: [o for o in cell.outputs if o.output_type == "error"] for cell_id, cell in graded.items()}
    for cell_id in ENGINE_CHECKS:
        assert errors[cell_id], f"lab 2's {cell_id} passed with no Docker Engine"
        message = errors[cell_id][0].evalue
        assert "needs a Docker Engine" in message, (
            f"lab 2's {cell_id}, with no engine, says {message!r}: it must say that it needs a Docker Engine "
            "(assert client is not None, NO_ENGINE as its first line)"
        )
    without_engine = sorted(set(graded) - ENGINE_CHECKS)
    failing = [cell_id for cell_id in without_engine if errors[cell_id]]
    assert not failing, f"lab 2's checks {failing} need no engine but fail without one: {[errors[c] for c in failing]}"
