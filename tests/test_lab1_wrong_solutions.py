"""Lab 1's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab1/`` patches one solution cell of the rendered lab
(see its README). The notebook then runs as nbgrader's autograder runs it (nbclient, errors
allowed, every cell): exactly the test cells the mistake names must fail, each with an error
whose text matches the mistake's ``message``, and every other test cell must still pass, so
that the mistake costs its points and no others (a race may also be caught, depending on
timing, by the cells listed in ``may_also_fail``).
"""

from __future__ import annotations

import concurrent.futures
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from labtools import failing_test_cells, patched_notebook, source_notebook

from dlcloud_course.labs import find

WRONG = Path(__file__).parent / "wrong_solutions" / "lab1"
MISTAKES = sorted(WRONG.glob("*.toml"))
CELL_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[dict, dict[str, str]]]:
    """Every mistake's failing test cells, the notebooks run two at a time (2 cores)."""
    notebook = source_notebook("lab1-bpaas")
    assert find("lab1-bpaas").source.exists()

    def run(path: Path):
        mistake = tomllib.loads(path.read_text(encoding="utf-8"))
        workdir = tmp_path_factory.mktemp(path.stem)
        return path.stem, (mistake, failing_test_cells(patched_notebook(notebook, mistake), workdir, CELL_TIMEOUT_S))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, MISTAKES))


def test_there_are_at_least_six_realistic_mistakes():
    assert len(MISTAKES) >= 6, f"keep at least six wrong solutions in {WRONG}"
    for path in MISTAKES:
        mistake = tomllib.loads(path.read_text(encoding="utf-8"))
        assert {"mistake", "cell", "replace", "with", "fails", "message"} <= set(mistake) <= {
            "mistake", "cell", "replace", "with", "fails", "message", "may_also_fail"}, path.name
        assert mistake["replace"] != mistake["with"] and mistake["fails"], path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", [path.stem for path in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    mistake, failures = outcomes[name]
    expected, timing_dependent = set(mistake["fails"]), set(mistake.get("may_also_fail", []))
    assert expected <= set(failures) <= expected | timing_dependent, (
        f"{name} ({mistake['mistake']}): expected {sorted(expected)} to fail "
        f"(and perhaps {sorted(timing_dependent)}), got {sorted(failures)}; messages: {failures}"
    )
    for grade_id in expected:
        assert re.search(mistake["message"], failures[grade_id]), (
            f"{name}: {grade_id} fails, but its message does not name the problem "
            f"(/{mistake['message']}/): {failures[grade_id][:500]}"
        )


def test_the_notebook_format_round_trips():
    """The patched notebooks are ordinary nbformat notebooks (what nbgrader would grade)."""
    notebook = source_notebook("lab1-bpaas")
    nbformat.validate(patched_notebook(notebook, tomllib.loads(MISTAKES[0].read_text(encoding="utf-8"))))
