"""The secure grader on every lab: each lab's honest solution and release, in the full-lock image.

For each lab, a class of two (the honest solution, the untouched release) is graded by
the instructor's own function, with the lab's own policy from its lab.toml (programs it
may start, its memory and time budget). The honest solution must earn full marks with
no flag, the release nothing. Lab 2's sandbox has the engine broker instead of an
engine, and its class adds the attacks of ``tests/adversarial/engine/``, each scoring no
more than the release and flagged. ``DLCLOUD_GRADER_LABS`` (comma-separated) narrows the
labs graded here; the default is every lab in ``solutions/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from labtools import honest_submission, lab_names, make_course, nbgrader

LABS = [lab for lab in os.environ.get("DLCLOUD_GRADER_LABS", ",".join(lab_names())).split(",") if lab]
HONEST, RELEASE = "honest-student", "release-student"
ENGINE_ADVERSARIAL = Path(__file__).parent / "adversarial" / "engine"
ENGINE_ATTACKS = sorted(path.stem for path in ENGINE_ADVERSARIAL.glob("*.py"))
LAB2_FIRST_SOLUTION = "wheelhouse-for-the-engine"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def full_lock_image(docker_client):
    from dlcloud_course.grader.image import build_grading_image

    try:
        return build_grading_image(docker_client, packages=None)
    except RuntimeError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no course image with this lock to build the full-lock grading image on: {error}")


@pytest.fixture(scope="module", params=LABS)
def graded_lab(request, tmp_path_factory, docker_client, full_lock_image):
    from dlcloud_course.grader.gradebook import Lab, grade_lab
    from dlcloud_course.grader.plan import read_notebook

    name = request.param
    if name == "lab2-containers":
        request.getfixturevalue("local_base_image")  # what the broker lets lab 2 build FROM
    course = make_course(tmp_path_factory.mktemp(f"grade-{name}"), [name])
    nbgrader(course, "generate_assignment", name, "--force")
    release = json.loads((course / "labs" / name / f"{name}.ipynb").read_text())
    lab = Lab(course, name, course / ".nbgrader")
    students = {HONEST: honest_submission(release, read_notebook(lab.source_path())), RELEASE: release}
    if name == "lab2-containers":
        students.update({f"engine-{attack}": _with_engine_attack(release, attack) for attack in ENGINE_ATTACKS})
    for student, notebook in students.items():
        folder = lab.grading_dir / "submitted" / student / name
        folder.mkdir(parents=True)
        (folder / f"{name}.ipynb").write_text(json.dumps(notebook))
    results = {r.student: r for r in grade_lab(docker_client, full_lock_image, lab, workers=2)}
    return name, results


def _with_engine_attack(release: dict, attack: str) -> dict:
    """Lab 2's release with an attack in front of its first solution cell."""
    notebook = json.loads(json.dumps(release))
    text = (ENGINE_ADVERSARIAL / f"{attack}.py").read_text()
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == LAB2_FIRST_SOLUTION:
            cell["source"] = text + "\n" + "".join(cell["source"])
    return notebook


def _expected_flags(attack: str) -> set[str]:
    first = (ENGINE_ADVERSARIAL / f"{attack}.py").read_text().splitlines()[0]
    return {reason.strip() for reason in first.removeprefix("# expect:").split(",")}


def test_engine_attacks_score_no_more_than_the_release_and_are_flagged(graded_lab):
    """Lab 2's class holds the attacks on its engine broker (no other lab has an engine)."""
    name, results = graded_lab
    release = results[RELEASE]
    for attack in ENGINE_ATTACKS if name == "lab2-containers" else []:
        attacker = results[f"engine-{attack}"]
        assert attacker.total <= release.total, (
            f"{attack} earned {attacker.total} points, the release {release.total}: "
            f"{[(r.grade_id, r.status) for r in attacker.results if r.points]}")
        reasons = {reason for reason, _ in attacker.flags}
        assert reasons & _expected_flags(attack), (
            f"{attack} must be flagged {_expected_flags(attack)}, got {attacker.flags}")


def test_honest_solution_full_marks_no_flags(graded_lab):
    name, results = graded_lab
    honest = results[HONEST]
    lost = [(r.grade_id, r.status, r.error, r.feedback[:160]) for r in honest.results if r.status != "pass"]
    assert not lost, f"{name}: the honest solution lost points in the sandbox: {lost}; flags {honest.flags}"
    assert not honest.flags, (
        f"{name}: the honest solution was flagged {honest.flags}: the lab's policy (lab.toml "
        f"needs/[grading]) may miss a program it starts; see grader/policy.py")


def test_release_earns_zero(graded_lab):
    name, results = graded_lab
    earned = [r.grade_id for r in results[RELEASE].results if r.points]
    assert not earned, f"{name}: the untouched release earns points in {earned}"
