"""Lab 6's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab6/`` patches one solution cell of the lab, in lab 1's
form (see its README). Running the whole lab once per mistake would take over a minute
each, most of it spent again on the same cells, so the mistakes share the reference's
prefix: the rendered lab runs once, as nbgrader's autograder runs it (one kernel, every
cell, errors allowed: ``failing_test_cells``), in a notebook that, just before each patched
cell, saves the kernel's namespace, then for each mistake runs the wrong cell and the code
cells after it up to the last test cell the mistake names (test cells included, their
grade_ids prefixed by the mistake's name; ``labtools.combined_notebook``), then puts the
namespace back and goes on with the reference. Exactly the test cells a mistake names must
fail, each with an error whose text matches ``message``; every test cell its run reaches
before that, and every test cell of the reference, must pass.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from labtools import (
    RESTORE_NAMESPACE,
    assert_mistake_caught,
    cell_role,
    combined_notebook,
    failing_test_cells,
    find,
    load_patch,
    mistake_outcomes,
    render_lab,
    source_notebook,
)

LAB = "lab6-gpu-training"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab6"
CELL_TIMEOUT_S = 600
REFERENCE = {grade_id: cell.source for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "solution"}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]
# Cells after the patched one that a mistake does not rerun: the end of the lab stops the
# memory watch, which can stop only once.
NOT_RERUN = {"cleanup"}

# Put the reference's names back, and the global state a wrong cell may leave behind
# (Keras's dtype policy is global: a mistake that leaks it must not fail the reference).
RESTORE = RESTORE_NAMESPACE + '\nkeras.config.set_dtype_policy("float32")'


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, str]]:
    """``{"reference": {test: error}, mistake name: {test: error}}`` from one kernel."""
    folder = render_lab(find(LAB), tmp_path_factory.mktemp(LAB))
    reference = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    combined = combined_notebook(reference, MISTAKES, NOT_RERUN, RESTORE, until_expected=True)
    return mistake_outcomes(failing_test_cells(combined, folder, CELL_TIMEOUT_S), MISTAKES)


def test_there_are_at_least_six_mistakes_in_several_cells():
    assert len(MISTAKES) >= 6, f"keep at least six realistic wrong solutions in {WRONG}, found {len(MISTAKES)}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "the mistakes should cover several solution cells"
    tests = {grade_id for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "tests"}
    for mistake in MISTAKES:
        assert set(mistake["fails"]) <= tests, f"{mistake['name']}: no test cell {mistake['fails']} in {LAB}"
        assert "/" not in mistake["name"], mistake["name"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test runs the fixture: the lab once, and each mistake's rest of it
def test_the_reference_solution_passes_every_test_cell(outcomes):
    assert not outcomes["reference"], f"the reference solution of {LAB} fails: {outcomes['reference']}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", [m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    assert_mistake_caught(next(m for m in MISTAKES if m["name"] == name), outcomes[name])
