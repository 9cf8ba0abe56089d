"""Static checks of every lab: metadata, hidden tests, outputs, and labs/ in sync."""

from __future__ import annotations

import filecmp
from collections import Counter
from pathlib import Path

import pytest
from labtools import (
    GRADE_ID,
    LABS,
    NBGRADER_DEFAULT_ID,
    SOLUTIONS,
    hidden_test_lines,
    lab_names,
    lab_notebooks,
    make_course,
    nbgrader,
    nbgrader_cells,
    read_notebook,
    source_of,
)

ALL_LABS = lab_names()


def test_there_are_labs():
    assert ALL_LABS, "solutions/ holds no lab"


@pytest.mark.parametrize("lab", ALL_LABS)
def test_graded_cells_have_descriptive_unique_grade_ids(lab):
    for path in lab_notebooks(lab):
        cells = nbgrader_cells(read_notebook(path))
        ids = [c["metadata"]["nbgrader"]["grade_id"] for c in cells]
        duplicated = [i for i, n in Counter(ids).items() if n > 1]
        assert not duplicated, f"{path.name}: grade_id used twice: {duplicated}"
        for cell in cells:
            meta = cell["metadata"]["nbgrader"]
            if not (meta.get("grade") or meta.get("solution")):
                continue
            grade_id = meta["grade_id"]
            assert not NBGRADER_DEFAULT_ID.match(grade_id), (
                f"{path.name}: {grade_id!r} is nbgrader's generated id; give it a descriptive one"
            )
            assert GRADE_ID.match(grade_id), f"{path.name}: {grade_id!r} is not kebab-case"
            if meta.get("grade") and not meta.get("solution"):
                assert meta.get("points", 0) > 0, f"{path.name}: test cell {grade_id} has no points"


@pytest.mark.parametrize("lab", ALL_LABS)
def test_lab_has_hidden_tests_and_solutions(lab):
    sources = [source_of(c) for p in lab_notebooks(lab) for c in read_notebook(p)["cells"]]
    assert hidden_test_lines(lab), f"{lab} has no hidden tests"
    assert any("### BEGIN SOLUTION" in s for s in sources), f"{lab} has no solution region"


@pytest.mark.parametrize("root", [SOLUTIONS, LABS], ids=["solutions", "labs"])
def test_notebooks_are_committed_without_outputs(root):
    with_outputs = [
        str(path.relative_to(root))
        for path in root.glob("*/*.ipynb")
        for cell in read_notebook(path)["cells"]
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not with_outputs, f"strip the outputs of {sorted(set(with_outputs))}"


@pytest.mark.parametrize("lab", ALL_LABS)
def test_released_lab_holds_no_solution_or_hidden_test(lab):
    released = "\n".join(
        source_of(c) for p in lab_notebooks(lab, LABS) for c in read_notebook(p)["cells"]
    )
    assert released, f"labs/{lab} is missing: run `make labs`"
    assert "BEGIN SOLUTION" not in released and "BEGIN HIDDEN TESTS" not in released
    leaked = [line for line in hidden_test_lines(lab) if line in released]
    assert not leaked, f"labs/{lab} shows hidden test lines {leaked[:3]}"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_labs_are_generated_from_solutions(tmp_path):
    course = make_course(tmp_path, ALL_LABS)
    for lab in ALL_LABS:
        nbgrader(course, "generate_assignment", lab, "--force", "--no-db")
    fresh, committed = course / "labs", LABS
    assert _tree(fresh) == _tree(committed), (
        "labs/ does not hold exactly what `make labs` generates: run `make labs` and commit"
    )
    differing = [n for n in _tree(fresh) if not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    assert not differing, f"labs/ is out of date for {differing}: run `make labs` and commit"
