"""Lab 5's tests catch realistic mistakes, each in the right cell, with a message that names it.

Each file in `wrong_solutions/lab5/` is a small patch of one solution cell in lab 1's form
(the mistake, the cell, the text it replaces and what with, the test cell that must then
lose its points, and a phrase that test's message must contain; see its README).

The lab runs in this process, as its kernel would: its code cells in order, in one
namespace. Before a cell that a mistake patches, the namespace is copied; in the copy the
wrong cell and the cells after it run up to the test cell the mistake names (other test
cells are skipped, as they would only fail on the same mistake), which must fail with an
assertion whose message names the problem. The reference run itself must pass every test
cell, so that a failure here is the mistake's, not the machine's. Spark starts once: the
features are computed once for the reference and only the patched steps again.
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

import pytest
from labtools import load_patch, source_notebook

from dlcloud.java import JavaNotFound, find_java_home

# Runs the lab's Spark and TensorFlow cells: make test, not the quick make check.
pytestmark = [pytest.mark.slow, pytest.mark.java]

LAB = "lab5-spark-tensorflow"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab5"
CELLS = [(cell.id, cell.source, cell.metadata.get("nbgrader", {}))
         for cell in source_notebook(LAB).cells if cell.cell_type == "code"]
REFERENCE = {grade_id: source for grade_id, source, _ in CELLS}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]


def is_test_cell(metadata: dict) -> bool:
    return bool(metadata.get("grade")) and not metadata.get("solution")


def index_of(grade_id: str) -> int:
    return next(i for i, (cell_id, _, _) in enumerate(CELLS) if cell_id == grade_id)


def run_cell(grade_id: str, source: str, namespace: dict) -> BaseException | None:
    """Run one cell's source in ``namespace``; what it raised (nbgrader fails the cell on any)."""
    try:
        exec(compile(source, f"{LAB}:{grade_id}", "exec"), namespace)
    except Exception as error:
        return error
    return None


def run_mistake(mistake: dict, namespace: dict) -> BaseException | None:
    """From the wrong cell to the test it must fail, in a copy of the namespace: that test's error."""
    copy = dict(namespace)
    for grade_id, source, metadata in CELLS[index_of(mistake["cell"]):index_of(mistake["fails"][0]) + 1]:
        if grade_id == mistake["cell"]:
            source = mistake["source"]
        elif is_test_cell(metadata) and grade_id != mistake["fails"][0]:
            continue
        error = run_cell(grade_id, source, copy)
        if error is not None:
            return error if grade_id == mistake["fails"][0] else RuntimeError(
                f"{grade_id} raised before the test ran: {''.join(traceback.format_exception_only(error))}")
    return None


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """``{"reference": {test: error}, mistake name: error or None}`` from one run of the lab."""
    try:
        find_java_home()
    except JavaNotFound as missing:
        pytest.skip(f"lab 5 needs Java 17 for Spark, which is missing: {missing}")
    namespace: dict = {"__name__": "__main__"}
    results: dict = {"reference": {}}
    try:
        for grade_id, source, metadata in CELLS:
            for mistake in (m for m in MISTAKES if m["cell"] == grade_id):
                results[mistake["name"]] = run_mistake(mistake, namespace)
            error = run_cell(grade_id, source, namespace)
            if error is not None:
                results["reference"][grade_id] = error
                if not is_test_cell(metadata):
                    break  # later cells would only fail on this one
    finally:
        if "spark" in namespace:
            namespace["spark"].stop()
        for path in (namespace.get("FEATURE_PATH"), namespace.get("MODEL_PATH")):
            if path:
                shutil.rmtree(path, ignore_errors=True)
                Path(path).unlink(missing_ok=True)
    return results


def test_there_are_at_least_six_mistakes_in_different_cells():
    assert len(MISTAKES) >= 6, f"Keep at least six realistic wrong solutions in {WRONG}, found {len(MISTAKES)}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "The mistakes should cover several solution cells"
    assert all(len(m["fails"]) == 1 for m in MISTAKES), "each mistake names the one test cell it loses points in"


def test_the_reference_solution_passes_every_test_cell(outcomes):
    failed = {name: repr(error)[:500] for name, error in outcomes["reference"].items()}
    assert not failed, f"The reference solution of lab 5 fails: {failed}"


@pytest.mark.parametrize("wrong", MISTAKES, ids=[m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_with_a_message_that_names_it(outcomes, wrong):
    error, test = outcomes[wrong["name"]], wrong["fails"][0]
    assert error is not None, f"{wrong['name']} ({wrong['mistake']}) passes {test}: the tests do not catch it"
    assert isinstance(error, AssertionError), (
        f"{wrong['name']} makes {test} fail with {type(error).__name__}: {error}; "
        "a test should fail with an assertion whose message names the problem")
    assert wrong["message"].lower() in str(error).lower(), (
        f"{wrong['name']}: {test} fails, but its message does not say {wrong['message']!r}: {error}")
