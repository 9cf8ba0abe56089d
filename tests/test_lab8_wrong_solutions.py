"""Lab 8's tests catch realistic mistakes, each in the right cell, with a message that names it.

Each file in `wrong_solutions/lab8/` is a small patch of one solution cell, in lab 1's form
(the mistake, the cell, the text it replaces and what with, the test cell that must then
lose its points, a phrase of that test's message). The lab runs once in this process, as its
kernel would (every cell but the test cells and the cleanup). Then, for each mistake, a copy
of that namespace with a fresh scratch folder reruns the cells from the patched one up to its
test cell, and the test cell must fail with that message. The same rerun with the reference
cell must pass, so a failure here is the mistake's, not the machine's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
from labtools import source_notebook

from dlcloud_course.labs import find

# Runs the whole lab (a registry, training, servers under load): make test, not make check.
pytestmark = pytest.mark.slow

LAB = "lab8-continuous-deployment"
LAB_DIR = find(LAB).source.parent
WRONG = Path(__file__).parent / "wrong_solutions" / "lab8"
CELLS = [(cell.get("id"), cell.source, cell.metadata.get("nbgrader", {}))
         for cell in source_notebook(LAB).cells if cell.cell_type == "code"]
INDEX = {cell_id: i for i, (cell_id, _, _) in enumerate(CELLS)}
REFERENCE = {cell_id: source for cell_id, source, _ in CELLS}


def is_test(metadata: dict) -> bool:
    return bool(metadata.get("grade")) and not metadata.get("solution")


def mistake(path: Path) -> dict:
    patch = tomllib.loads(path.read_text(encoding="utf-8"))
    assert {"mistake", "cell", "replace", "with", "fails", "message"} == set(patch), path.name
    count = REFERENCE[patch["cell"]].count(patch["replace"])
    assert count == 1, f"{path.name}: its `replace` text occurs {count} times in {patch['cell']!r}: update the patch"
    (test,) = patch["fails"]
    assert INDEX[test] > INDEX[patch["cell"]], f"{path.name}: {test} must come after {patch['cell']}"
    return {"name": path.stem, "cell": patch["cell"], "test": test, "message": patch["message"],
            "source": REFERENCE[patch["cell"]].replace(patch["replace"], patch["with"])}


MISTAKES = [mistake(path) for path in sorted(WRONG.glob("*.toml"))]


@contextlib.contextmanager
def lab_directory():
    previous = Path.cwd()
    os.chdir(LAB_DIR)  # the lab copies its Dockerfile and k8s/ from the current folder
    try:
        yield
    finally:
        os.chdir(previous)


def run(source: str, name: str, namespace: dict) -> None:
    with lab_directory():
        exec(compile(source, f"{LAB}:{name}", "exec"), namespace)  # noqa: S102 - the lab's own cells


@pytest.fixture(scope="module")
def lab():
    namespace: dict = {"__name__": "__main__"}
    scratch = []
    try:
        for cell_id, source, metadata in CELLS:
            if not is_test(metadata) and cell_id != "cleanup":
                run(source, cell_id, namespace)
        yield namespace, scratch
    finally:
        for running in reversed(namespace.get("RUNNING", [])):
            with contextlib.suppress(Exception):
                running.stop(grace=None)
        for folder in [namespace.get("WORK"), *scratch]:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


def rerun_to(lab, first: str, test: str, replace: dict[str, str]) -> BaseException | None:
    """Rerun the non-test cells from `first` up to `test` in a copy of the namespace; what `test` raised."""
    base, scratch = lab
    namespace = dict(base)
    namespace["WORK"] = Path(tempfile.mkdtemp(prefix="lab8-wrong-"))  # cells that write files start afresh
    scratch.append(namespace["WORK"])
    for cell_id, source, metadata in CELLS[INDEX[first]:INDEX[test]]:
        if not is_test(metadata):
            run(replace.get(cell_id, source), cell_id, namespace)
    try:
        run(REFERENCE[test], test, namespace)
    except Exception as error:  # a test cell fails by raising: that is what is checked
        return error
    return None


@pytest.mark.parametrize("case", MISTAKES, ids=[case["name"] for case in MISTAKES])
def test_reference_cells_pass_the_same_rerun(lab, case):
    error = rerun_to(lab, case["cell"], case["test"], {})
    assert error is None, f"the reference fails {case['test']} after a rerun from {case['cell']}: {error!r}"


@pytest.mark.parametrize("case", MISTAKES, ids=[case["name"] for case in MISTAKES])
def test_mistake_fails_its_test_with_a_message_that_names_it(lab, case):
    error = rerun_to(lab, case["cell"], case["test"], {case["cell"]: case["source"]})
    assert isinstance(error, AssertionError), (
        f"{case['name']}: {case['test']} must fail with an assertion, got {error!r}")
    assert case["message"] in str(error), f"{case['name']}: {case['test']} failed with another message: {error}"
