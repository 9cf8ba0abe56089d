"""The wrong-solution harness itself: a combined run puts the reference's state back after each mistake."""

from __future__ import annotations

import nbformat
from labtools import RESTORE_NAMESPACE, cell_role, combined_notebook, mistake_outcomes


def _cell(source: str, role: str | None = None, grade_id: str = "") -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.id = grade_id or f"cell-{abs(hash(source)) % 10**8}"
    if role:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": role == "solution",
                                     "grade": role == "tests", "locked": role == "tests"}
    return cell


def _run_in_one_namespace(notebook) -> dict[str, str]:
    """Each code cell in order in one namespace, as a kernel would; failing test cells."""
    namespace: dict = {}
    failures = {}
    for cell in notebook.cells:
        try:
            exec(compile(cell.source, cell.id, "exec"), namespace)  # noqa: S102 -- the test's own cells
        except Exception as error:  # noqa: BLE001 -- a failing cell is an outcome
            role, grade_id = cell_role(cell)
            assert role == "tests", f"a non-test cell failed: {cell.source!r}: {error!r}"
            failures[grade_id] = f"{type(error).__name__}: {error}"
    return failures


def test_each_mistake_runs_from_its_cell_and_the_reference_gets_its_state_back():
    reference = nbformat.v4.new_notebook()
    reference.cells = [
        _cell("total = 1\nlog = []"),
        _cell("def step(x):\n    return x + 1\n", "solution", "write-step"),
        _cell("total = step(total)\nlog.append(total)"),
        _cell("assert total == 2, 'step must add one'", "tests", "step-adds-one"),
        _cell("two = 2"),  # defined between the two save points: must survive both
        _cell("def double(x):\n    return 2 * x\n", "solution", "write-double"),
        _cell("assert double(two) == 4, 'double must double'", "tests", "double-doubles"),
    ]
    # Two mistakes in each of two cells: the second save point must not restore the first's state.
    mistakes = [{"name": "adds-two", "cell": "write-step", "replace": "x + 1", "with": "x + 2",
                 "fails": ["step-adds-one"]},
                {"name": "leaks-a-name", "cell": "write-step", "replace": "return x + 1",
                 "with": "global leaked\n    leaked = True\n    return x + 1", "fails": []},
                {"name": "triples", "cell": "write-double", "replace": "2 * x", "with": "3 * x",
                 "fails": ["double-doubles"]},
                {"name": "squares", "cell": "write-double", "replace": "2 * x", "with": "x * x",
                 "fails": []}]
    combined = combined_notebook(reference, mistakes, restore=RESTORE_NAMESPACE + "\nassert 'leaked' not in globals()")
    outcomes = mistake_outcomes(_run_in_one_namespace(combined), mistakes)
    assert outcomes == {"reference": {}, "adds-two": {"step-adds-one": "AssertionError: step must add one"},
                        "leaks-a-name": {}, "triples": {"double-doubles": "AssertionError: double must double"},
                        "squares": {}}, outcomes


def test_until_expected_stops_a_mistakes_run_after_the_test_it_must_fail():
    reference = nbformat.v4.new_notebook()
    reference.cells = [
        _cell("def step(x):\n    return x + 1\n", "solution", "write-step"),
        _cell("assert step(1) == 2, 'step must add one'", "tests", "step-adds-one"),
        _cell("assert step(2) == 3, 'a later check of the same mistake'", "tests", "step-again"),
    ]
    mistakes = [{"name": "adds-two", "cell": "write-step", "replace": "x + 1", "with": "x + 2",
                 "fails": ["step-adds-one"]}]
    combined = combined_notebook(reference, mistakes, until_expected=True)
    outcomes = mistake_outcomes(_run_in_one_namespace(combined), mistakes)
    assert outcomes == {"reference": {}, "adds-two": {"step-adds-one": "AssertionError: step must add one"}}, (
        f"the run stops after the test the mistake names: {outcomes}")
