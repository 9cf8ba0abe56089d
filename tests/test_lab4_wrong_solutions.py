"""Lab 4's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab4/`` patches one solution cell of the lab (see its
README), in the form of lab 1's wrong solutions. The lab is rendered with the files it
ships (the price table, the model-card schema) and runs once, as nbgrader's autograder runs
it (nbclient, errors allowed, every cell), with every mistake's run inserted before the cell
it patches (``labtools.combined_notebook``): the wrong cell and the cells after it up to the
last test cell the mistake names, then the namespace put back. Exactly the test cells a
mistake names must fail, each with an error whose text matches ``message``; every test cell
its run reaches before that, and every test cell of the reference, must pass.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from labtools import (
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

LAB = "lab4-ml-in-the-cloud"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab4"
CELL_TIMEOUT_S = 600
REFERENCE = {grade_id: cell.source for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "solution"}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, str]]:
    folder = render_lab(find(LAB), tmp_path_factory.mktemp(LAB))
    reference = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    combined = combined_notebook(reference, MISTAKES, until_expected=True)
    return mistake_outcomes(failing_test_cells(combined, folder, CELL_TIMEOUT_S), MISTAKES)


def test_the_mistakes_are_well_formed_and_apply():
    assert len(MISTAKES) >= 6, f"keep at least six wrong solutions in {WRONG}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "the mistakes should cover several solution cells"
    tests = {grade_id for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "tests"}
    for mistake in MISTAKES:
        assert set(mistake["fails"]) <= tests and "/" not in mistake["name"], mistake["name"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first test runs the fixture: the lab once, and each mistake's part of it
def test_the_reference_solution_passes_every_test_cell(outcomes):
    assert not outcomes["reference"], f"the reference solution of {LAB} fails: {outcomes['reference']}"


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", [m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    assert_mistake_caught(next(m for m in MISTAKES if m["name"] == name), outcomes[name])
