"""Lab 7's tests catch realistic mistakes, each in the right cell, with a message that names it.

Each file in `wrong_solutions/lab7/` is a small patch of one solution cell, as a good
student under time pressure might write it, in the same form as lab 1's: the mistake, the
cell, the text it replaces and what with, the test cell that must then lose its points,
and a phrase that test's message must contain. The lab runs in this process as its
kernel would (`lab7_support.LabSession`): the expensive cells before the batcher (loading
the model, computing the quote-time features) once, then, for each mistake, a copy of that
namespace runs every non-test cell from the batcher on, with the wrong cell swapped in, up to the
test cell that must fail. The same run with the reference cells must pass, so a failure
here is the mistake's, not the machine's.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from lab7_support import LabSession
from labtools import source_notebook

# Runs the lab's server and cells: make test, not the quick make check.
pytestmark = pytest.mark.slow

WRONG = Path(__file__).parent / "wrong_solutions" / "lab7"
FIRST_REPLACEABLE = "dynamic-batcher"  # every mistake replaces this cell or a later one
REFERENCE = {cell.id: cell.source for cell in source_notebook("lab7-grpc-serving").cells}


def mistake(path: Path) -> dict:
    """A patch of one reference cell, applied: the wrong cell's whole source."""
    patch = tomllib.loads(path.read_text(encoding="utf-8"))
    assert {"mistake", "cell", "replace", "with", "fails", "message"} == set(patch), path.name
    reference = REFERENCE[patch["cell"]]
    count = reference.count(patch["replace"])
    assert count == 1, f"{path.name}: its `replace` text occurs {count} times in {patch['cell']!r}: update the patch"
    (test,) = patch["fails"]
    return {"name": path.stem, "why": patch["mistake"], "cell": patch["cell"], "test": test,
            "message": patch["message"], "source": reference.replace(patch["replace"], patch["with"])}


MISTAKES = [mistake(path) for path in sorted(WRONG.glob("*.toml"))]


@pytest.fixture(scope="module")
def lab():
    session = LabSession()
    try:
        session.run_until(FIRST_REPLACEABLE)
        yield session
    finally:
        session.close()


def run_test_cell(lab: LabSession, test: str, replace: dict[str, str]) -> BaseException | None:
    """Run the lab from the batcher to `test` in a copy of the namespace; what `test` raised."""
    namespace = dict(lab.namespace)
    lab.run_until(test, namespace=namespace, start=lab.index_of(FIRST_REPLACEABLE), replace=replace)
    try:
        lab.run_cell(test, namespace=namespace)
    except Exception as error:  # nbgrader scores a cell that raises anything as failed
        return error
    return None


def test_there_are_at_least_six_mistakes_in_different_cells():
    assert len(MISTAKES) >= 6, f"Keep at least six realistic wrong solutions in {WRONG}, found {len(MISTAKES)}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "The mistakes should cover several solution cells"


@pytest.mark.parametrize("test", sorted({m["test"] for m in MISTAKES}))
def test_the_reference_solution_passes_each_test_cell(lab, test):
    error = run_test_cell(lab, test, replace={})
    assert error is None, f"The reference solution fails {test}: {error!r}"


@pytest.mark.parametrize("wrong", MISTAKES, ids=[m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_with_a_message_that_names_it(lab, wrong):
    error = run_test_cell(lab, wrong["test"], replace={wrong["cell"]: wrong["source"]})
    assert error is not None, (
        f"{wrong['name']} ({wrong['why']}) passes {wrong['test']}: the tests do not catch it")
    assert isinstance(error, AssertionError), (
        f"{wrong['name']} makes {wrong['test']} fail with {type(error).__name__}: {error}; "
        "a test should fail with an assertion whose message names the problem")
    assert wrong["message"].lower() in str(error).lower(), (
        f"{wrong['name']}: {wrong['test']} fails, but its message does not say {wrong['message']!r}: {error}")
