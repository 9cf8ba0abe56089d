"""Lab 3's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab3/`` patches one solution cell of the lab (see its
README), in the form of lab 1's wrong solutions. The lab's manifests are solution
artifacts: the cells write them (``write_layout``) from the objects the solution cells
build, so a wrong manifest is a patch of the cell that builds it. The lab is rendered with
the files it ships (the kustomize skeleton, the bad manifest, the price table), the patch
applied, and the notebook run as nbgrader's autograder runs it (every cell, errors
allowed), with the real ``kubectl kustomize`` and ``kubernetes-validate --strict``:
exactly the test cells the mistake names must fail, each with an error whose text matches
``message``, and every other test cell must pass. The reference run passes every test
cell, so that a failure is the mistake's, not the machine's.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import nbformat
import pytest
from labtools import (
    assert_mistake_caught,
    cell_role,
    failing_test_cells,
    find,
    load_patch,
    patched_notebook,
    render_lab,
    source_notebook,
)

# Runs the whole lab once per mistake (about 40 s each): make test, not the quick make check.
pytestmark = pytest.mark.slow

LAB = "lab3-kubernetes"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab3"
REFERENCE = {cell.id: cell.source for cell in source_notebook(LAB).cells if cell.cell_type == "code"}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]
CELL_TIMEOUT_S = 300


def _run(mistake: dict | None, tmp: Path) -> dict[str, str]:
    """grade_id -> error text of every test cell that fails, with ``mistake`` applied (or none)."""
    folder = render_lab(find(LAB), tmp)
    notebook = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    if mistake is not None:
        notebook = patched_notebook(notebook, mistake)
    return failing_test_cells(notebook, folder, CELL_TIMEOUT_S)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, str]]:
    """The reference's and every mistake's failing test cells, two notebooks at a time (2 cores)."""
    runs = [("reference", None), *((m["name"], m) for m in MISTAKES)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, mistake, tmp_path_factory.mktemp(name)) for name, mistake in runs}
        return {name: future.result() for name, future in futures.items()}


def test_there_are_at_least_six_mistakes_in_different_cells():
    assert len(MISTAKES) >= 6, f"keep at least six realistic wrong solutions in {WRONG}, found {len(MISTAKES)}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "the mistakes should cover several solution cells"
    notebook = source_notebook(LAB)
    solutions = {grade_id for role, grade_id in map(cell_role, notebook.cells) if role == "solution"}
    tests = {grade_id for role, grade_id in map(cell_role, notebook.cells) if role == "tests"}
    for mistake in MISTAKES:
        assert mistake["cell"] in solutions, f"{mistake['name']}: {mistake['cell']!r} is no solution cell"
        assert set(mistake["fails"]) <= tests, f"{mistake['name']}: {mistake['fails']} are not all test cells"


@pytest.mark.timeout(1800)  # the first test runs the fixture: every mistake's notebook, two at a time
def test_the_reference_solution_passes_every_test_cell(outcomes):
    assert outcomes["reference"] == {}, f"the reference solution of {LAB} fails: {outcomes['reference']}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("wrong", MISTAKES, ids=[m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, wrong):
    assert_mistake_caught(wrong, outcomes[wrong["name"]])
