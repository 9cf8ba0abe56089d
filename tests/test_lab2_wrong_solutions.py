"""Lab 2's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab2/`` patches one solution cell of the rendered lab,
in the form of lab 1's (see its README). The lab is rendered with its generated files
(lab 1's service, the pinned requirements) and runs as nbgrader's autograder runs it,
on the real Docker Engine: exactly the test cells the mistake names must fail, each with
an error whose text matches the mistake's ``message``, and every other test cell must still
pass, so that the mistake costs its points and no others.
"""

from __future__ import annotations

import concurrent.futures
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from labtools import failing_test_cells, find, patched_notebook, render_lab

pytestmark = pytest.mark.docker

LAB = "lab2-containers"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab2"
MISTAKES = sorted(WRONG.glob("*.toml"))
CELL_TIMEOUT_S = 240
KEYS = {"mistake", "cell", "replace", "with", "fails", "message"}


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _run(path: Path, tmp_path_factory) -> tuple[dict, dict[str, str]]:
    mistake = _load(path)
    folder = render_lab(find(LAB), tmp_path_factory.mktemp(path.stem))
    notebook = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    return mistake, failing_test_cells(patched_notebook(notebook, mistake), folder, CELL_TIMEOUT_S)


@pytest.fixture(scope="module")
def outcomes(docker_client, local_base_image, tmp_path_factory):
    """Every mistake's run, one notebook at a time, as futures.

    One at a time because two runs of lab 2 on one engine disturb each other: a code-only
    rebuild may take its cached layers from the other run's identical build, and each
    run's cleanup removes the untagged builder images created since it started, the other
    run's included. Each run builds and runs the lab's images for minutes; a test waits
    only for its own future, so that each test stays within its timeout while the others
    run behind it.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        yield {path.stem: pool.submit(_run, path, tmp_path_factory) for path in MISTAKES}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_there_are_at_least_six_realistic_mistakes():
    assert len(MISTAKES) >= 6, f"keep at least six wrong solutions in {WRONG}"
    for path in MISTAKES:
        mistake = _load(path)
        assert KEYS <= set(mistake) <= KEYS | {"may_also_fail"}, path.name
        assert mistake["replace"] != mistake["with"] and mistake["fails"], path.name
    assert len({_load(path)["cell"] for path in MISTAKES}) >= 4, "the mistakes should cover several solution cells"


@pytest.mark.slow
@pytest.mark.parametrize("name", [path.stem for path in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    mistake, failures = outcomes[name].result()
    expected, also = set(mistake["fails"]), set(mistake.get("may_also_fail", []))
    assert expected <= set(failures) <= expected | also, (
        f"{name} ({mistake['mistake']}): expected {sorted(expected)} to fail "
        f"(and perhaps {sorted(also)}), got {sorted(failures)}; messages: {failures}"
    )
    for grade_id in expected:
        assert re.search(mistake["message"], failures[grade_id]), (
            f"{name}: {grade_id} fails, but its message does not name the problem "
            f"(/{mistake['message']}/): {failures[grade_id][:500]}"
        )
