"""Lab 2's tests catch realistic mistakes, in the right cell and with a message that names them.

Each file of ``tests/wrong_solutions/lab2/`` patches one solution cell of the rendered lab,
in the form of lab 1's (see its README). The lab is rendered with its generated files
(lab 1's service, the pinned requirements) and runs once, as nbgrader's autograder runs
it, on the real Docker Engine, with every mistake's run inserted before the cell it patches
(``labtools.combined_notebook``: the mistake's wrong cell and every code cell after it, then
the namespace and the engine put back). A mistake's run stops after the last test cell it
names (``until_expected``, for CI's time). Exactly the test cells a mistake names must fail,
each with an error whose text matches its ``message``; every test cell its run reaches
before that, and every test cell of the reference, must pass.

One kernel, one run: two runs of lab 2 on one engine would share the engine's build
cache, and one's cleanup would take away layers the other's rebuild counts on.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from labtools import (
    RESTORE_NAMESPACE,
    SAVE_NAMESPACE,
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

pytestmark = pytest.mark.docker

LAB = "lab2-containers"
WRONG = Path(__file__).parent / "wrong_solutions" / "lab2"
CELL_TIMEOUT_S = 300
REFERENCE = {grade_id: cell.source for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "solution"}
MISTAKES = [load_patch(path, REFERENCE) for path in sorted(WRONG.glob("*.toml"))]
# The last cell removes everything the run built: it may run once, at the very end.
NOT_RERUN = {"cleanup"}
# Besides its names, what a mistake's run leaves that the reference would reuse:
# - the images its builds made: the engine's cache would serve the reference's rebuild
#   from the mistake's layers rather than from its own cold build (the images recorded
#   since the save point go, tagged or not, children first);
# - the other architecture's wheelhouse (a wrong download stays in the folder the hidden
#   test downloads into again);
# - the policies volume, whose database would hold the reference's idempotency keys.
# The build context's own wheelhouse stays: later cells build from it.
SAVE = "_built_at_save = set(BUILT)\n" + SAVE_NAMESPACE
RESTORE = """
_made = BUILT - _built_at_save
for _ in range(5):
    for _id in sorted(_made):
        try:
            client.images.remove(_id, force=True)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError:
            continue
        _made.discard(_id)
BUILT.intersection_update(_built_at_save)
for _folder in WORK.glob("wheelhouse-*"):
    shutil.rmtree(_folder, ignore_errors=True)
if client is not None:
    for _volume in client.volumes.list(filters={"label": f"dlcloud.run={RUN_ID}"}):
        _volume.remove(force=True)
""" + RESTORE_NAMESPACE


@pytest.fixture(scope="module")
def outcomes(docker_client, local_base_image, tmp_path_factory) -> dict[str, dict[str, str]]:
    folder = render_lab(find(LAB), tmp_path_factory.mktemp(LAB))
    reference = nbformat.read(folder / f"{LAB}.ipynb", as_version=4)
    combined = combined_notebook(reference, MISTAKES, NOT_RERUN, RESTORE, SAVE, until_expected=True)
    failures = failing_test_cells(combined, folder, CELL_TIMEOUT_S)
    return mistake_outcomes(failures, MISTAKES)


def test_there_are_at_least_six_realistic_mistakes():
    assert len(MISTAKES) >= 6, f"keep at least six wrong solutions in {WRONG}"
    assert len({m["cell"] for m in MISTAKES}) >= 4, "the mistakes should cover several solution cells"
    tests = {grade_id for cell in source_notebook(LAB).cells
             for role, grade_id in [cell_role(cell)] if role == "tests"}
    for mistake in MISTAKES:
        assert set(mistake["fails"]) | set(mistake.get("may_also_fail", [])) <= tests, mistake["name"]
        assert "/" not in mistake["name"], mistake["name"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first test runs the fixture: the lab once, and each mistake's rest of it
def test_the_reference_solution_passes_every_test_cell(outcomes):
    assert not outcomes["reference"], f"the reference solution of {LAB} fails: {outcomes['reference']}"


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", [m["name"] for m in MISTAKES])
def test_each_mistake_loses_points_in_the_right_cells(outcomes, name):
    assert_mistake_caught(next(m for m in MISTAKES if m["name"] == name), outcomes[name])
