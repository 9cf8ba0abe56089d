"""Lab 4's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab4/`` patches one solution cell of the lab (see its
README), in the form of lab 1's wrong solutions. The lab is rendered with the files it
ships (the price table, the model-card schema), the patch applied, and the notebook run as
nbgrader's autograder runs it (nbclient, errors allowed, every cell): exactly the test
cells the mistake names must fail, each with an error whose text matches ``message``, and
every other test cell must pass, so that a mistake costs its points and no others.
"""

from __future__ import annotations

import concurrent.futures
import tomllib
from pathlib import Path

import nbformat
import pytest
from labtools import assert_mistake_caught, cell_role, failing_test_cells, patched_notebook

from dlcloud_course.generate import render_lab
from dlcloud_course.labs import find

LAB = "lab4-ml-in-the-cloud"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab4"
MISTAKES = sorted(WRONG.glob("*.toml"))
CELL_TIMEOUT_S = 600


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _rendered(tmp: Path) -> Path:
    """The instructor's notebook of lab 4 in a folder with the files the lab ships."""
    folder = render_lab(find(LAB), tmp)
    (notebook,) = folder.glob("*.ipynb")
    return notebook


def _failures(path: Path, mistake: dict) -> dict[str, str]:
    """grade_id -> error text of every test cell that fails (raises or writes to stderr)."""
    notebook = patched_notebook(nbformat.read(path, as_version=4), mistake)
    return failing_test_cells(notebook, path.parent, CELL_TIMEOUT_S)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[dict, dict[str, str]]]:
    """Every mistake's failing test cells, two notebooks at a time (2 cores)."""

    def run(path: Path):
        mistake = _load(path)
        return path.stem, (mistake, _failures(_rendered(tmp_path_factory.mktemp(path.stem)), mistake))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, MISTAKES))


def test_the_mistakes_are_well_formed_and_apply(tmp_path):
    assert len(MISTAKES) >= 6, f"keep at least six wrong solutions in {WRONG}"
    notebook = nbformat.read(_rendered(tmp_path), as_version=4)
    test_cells = {grade_id for role, grade_id in map(cell_role, notebook.cells) if role == "tests"}
    for path in MISTAKES:
        mistake = _load(path)
        assert set(mistake) == {"mistake", "cell", "replace", "with", "fails", "message"}, path.name
        assert mistake["replace"] != mistake["with"] and set(mistake["fails"]) <= test_cells, path.name
        nbformat.validate(patched_notebook(notebook, mistake))


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first test runs the fixture: seven whole labs, two at a time
@pytest.mark.parametrize("name", [path.stem for path in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    mistake, failures = outcomes[name]
    assert_mistake_caught({**mistake, "name": name}, failures)
