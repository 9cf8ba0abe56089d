"""Lab 6's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab6/`` patches one solution cell of the lab, in lab 1's
form (see its README). Running the whole lab once per mistake would take over a minute
each, most of it spent again on the same cells, so the mistakes share the reference's
prefix: the rendered lab runs once, as nbgrader's autograder runs it (one kernel, every
cell, errors allowed: ``failing_test_cells``), in a notebook that, just before each patched
cell, saves the kernel's namespace, then for each mistake runs the wrong cell and every
code cell after it (test cells included, their grade_ids prefixed by the mistake's name),
then puts the namespace back and goes on with the reference. Exactly the test cells a
mistake names must fail, each with an error whose text matches ``message``, and every other
test cell, its own and the reference's, must pass: a mistake costs its points and no others.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from labtools import cell_role, failing_test_cells, find, load_patch, patched_notebook, render_lab, source_notebook

LAB = "lab6-gpu-training"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab6"
CELL_TIMEOUT_S = 600
REFERENCE = {grade_id: cell.source for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "solution"}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]
# Cells after the patched one that a mistake does not rerun: the end of the lab stops the
# memory watch, which can stop only once.
NOT_RERUN = {"cleanup"}

SAVE_NAMESPACE = "_reference_namespace = dict(globals())"
# Put the reference's names back, and the global state a wrong cell may leave behind
# (Keras's dtype policy is global: a mistake that leaks it must not fail the reference).
RESTORE_NAMESPACE = """\
for _name in [name for name in globals() if name not in _reference_namespace]:
    del globals()[_name]
globals().update(_reference_namespace)
keras.config.set_dtype_policy("float32")"""


def _helper(source: str, cell_id: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.id = cell_id
    return cell


def combined_notebook(reference: nbformat.NotebookNode, mistakes: list[dict]) -> nbformat.NotebookNode:
    """The reference's cells, with each mistake's run (the wrong cell and every code cell
    after it) inserted before the cell it patches, between a save and a restore of the
    namespace; its test cells' grade_ids read ``<mistake>/<grade_id>``."""
    combined = nbformat.from_dict(reference)
    combined.cells = []
    for index, cell in enumerate(reference.cells):
        role, grade_id = cell_role(cell)
        patching = [m for m in mistakes if role == "solution" and m["cell"] == grade_id]
        if patching:
            combined.cells.append(_helper(SAVE_NAMESPACE, f"save-{index}"))
        for number, mistake in enumerate(patching):
            wrong = patched_notebook(reference, mistake)
            for later, tail in enumerate(wrong.cells[index:]):
                if tail.cell_type != "code" or cell_role(tail)[1] in NOT_RERUN:
                    continue
                tail = nbformat.from_dict(tail)
                tail.id = f"wrong-{index}-{number}-{later}"
                if cell_role(tail)[0] == "tests":
                    tail.metadata.nbgrader.grade_id = f"{mistake['name']}/{cell_role(tail)[1]}"
                combined.cells.append(tail)
            combined.cells.append(_helper(RESTORE_NAMESPACE, f"restore-{index}-{number}"))
        combined.cells.append(cell)
    return combined


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict[str, str]]:
    """``{"reference": {test: error}, mistake name: {test: error}}`` from one kernel."""
    folder = render_lab(find(LAB), tmp_path_factory.mktemp(LAB))
    reference = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    failures = failing_test_cells(combined_notebook(reference, MISTAKES), folder, CELL_TIMEOUT_S)
    results: dict[str, dict[str, str]] = {"reference": {}, **{m["name"]: {} for m in MISTAKES}}
    for grade_id, error in failures.items():
        name, _, test = grade_id.rpartition("/")
        results[name or "reference"][test] = error
    return results


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
    mistake = next(m for m in MISTAKES if m["name"] == name)
    failures, expected = outcomes[name], set(mistake["fails"])
    assert set(failures) == expected, (
        f"{name} ({mistake['mistake']}): expected exactly {sorted(expected)} to fail, got "
        f"{sorted(failures)}; messages: {failures}")
    for grade_id in expected:
        assert re.search(mistake["message"], failures[grade_id]), (
            f"{name}: {grade_id} fails, but its message does not name the problem "
            f"(/{mistake['message']}/): {failures[grade_id][:500]}")
