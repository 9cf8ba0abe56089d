"""The secure grader on lab 1, with a real Docker Engine: honest, release, and every attack.

One class of students is graded once (two sandboxes at a time) by the instructor
command's own function: the honest solution, the untouched release, each adversarial
submission of ``tests/adversarial/`` (its text in front of the release's first solution
cell), and submissions whose test cells were edited or deleted. The tests then read the
gradebook, ``flags/lab1-bpaas.csv``, the feedback, and check that nothing is left.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest
from labtools import hidden_test_lines, honest_submission, make_course, nbgrader

LAB = "lab1-bpaas"
ADVERSARIAL = Path(__file__).parent / "adversarial"
ATTACKS = sorted(p.stem for p in ADVERSARIAL.glob("*.py"))
FIRST_SOLUTION = "state-machine-transition"
HONEST, RELEASE = "honest-student", "release-student"
EDITED, DELETED = "edited-tests", "deleted-tests"
CELL_EDITS = {EDITED: "edited-cell", DELETED: "deleted-cell"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _with_attack(release: dict, attack: str) -> dict:
    notebook = json.loads(json.dumps(release))
    for cell in notebook["cells"]:
        if _grade_id(cell) == FIRST_SOLUTION:
            stub = "".join(cell["source"])
            cell["source"] = attack + "\n" + stub
    return notebook


def _tests_rewritten(honest: dict, delete: bool) -> dict:
    """The honest notebook whose test cells always pass (edited) or are gone (deleted)."""
    notebook = json.loads(json.dumps(honest))
    kept = []
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            if delete:
                continue
            cell["source"] = "pass\n"
        kept.append(cell)
    notebook["cells"] = kept
    # The solutions go too, so that the instructor's restored tests fail: only the
    # test cells' edit could have earned points.
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell["source"] = "raise NotImplementedError()\n"
    return notebook


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory, docker_client, local_base_image):
    from dlcloud_course.grader.gradebook import Lab, grade_lab
    from dlcloud_course.grader.image import build_grading_image
    from dlcloud_course.grader.plan import read_notebook
    from dlcloud_course.grader.sandbox import Limits

    course = make_course(tmp_path_factory.mktemp("secure-grader"), [LAB])
    nbgrader(course, "generate_assignment", LAB, "--force")
    release = json.loads((course / "labs" / LAB / f"{LAB}.ipynb").read_text())
    solutions = read_notebook(Lab(course, LAB, course / ".nbgrader").source_path())
    honest = honest_submission(release, solutions)
    submissions = {HONEST: honest, RELEASE: release,
                   EDITED: _tests_rewritten(honest, delete=False),
                   DELETED: _tests_rewritten(honest, delete=True)}
    for attack in ATTACKS:
        submissions[f"attack-{attack.replace('_', '-')}"] = _with_attack(
            release, (ADVERSARIAL / f"{attack}.py").read_text())
    grading = course / ".nbgrader"
    for student, notebook in submissions.items():
        folder = grading / "submitted" / student / LAB
        folder.mkdir(parents=True)
        (folder / f"{LAB}.ipynb").write_text(json.dumps(notebook))
    image = build_grading_image(docker_client, base=local_base_image)
    lab = Lab(course, LAB, grading)
    # Small limits: the memory and fork bombs must stay small on a shared machine.
    limits = Limits(memory_mb=1024, cpus=1.0, pids=48, wall_s=120, output_bytes=128 * 1024,
                    cell_s=60)
    before = {s: (grading / "submitted" / s / LAB / f"{LAB}.ipynb").read_bytes() for s in submissions}
    # Not labelled dlcloud.test=1: other test sessions on a shared engine remove whatever
    # carries that label when they end, running sandboxes included. run_in_sandbox()
    # removes its own container, and test_no_sandbox_is_left checks by the grader's label.
    results = {r.student: r for r in grade_lab(docker_client, image, lab, workers=2, limits=limits)}
    return {"lab": lab, "results": results, "before": before, "client": docker_client}


def _gradebook_totals(lab) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(lab.db_url) as gradebook:
        return {s.student.id: s.score for s in gradebook.assignment_submissions(LAB)}


def _flags(lab) -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    with (lab.grading_dir / "flags" / f"{LAB}.csv").open() as handle:
        for row in csv.DictReader(handle):
            flags.setdefault(row["student"], set()).add(row["reason"])
    return flags


def test_honest_solution_earns_full_marks_and_no_flags(graded_class):
    result = graded_class["results"][HONEST]
    lost = [(r.grade_id, r.status, r.feedback) for r in result.results if r.status != "pass"]
    assert not lost, f"The honest solution of {LAB} lost points through the secure grader: {lost}"
    assert not result.flags, f"The honest solution was flagged: {result.flags}; see runner.py"
    total = sum(r.max_points for r in result.results)
    assert _gradebook_totals(graded_class["lab"])[HONEST] == total, (
        "The gradebook does not hold the honest solution's full marks: see write_gradebook()")


def test_release_earns_zero(graded_class):
    result = graded_class["results"][RELEASE]
    earned = [r.grade_id for r in result.results if r.points]
    assert not earned, f"The untouched release earns points in {earned}: the tests must fail"
    assert _gradebook_totals(graded_class["lab"])[RELEASE] == 0


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_scores_no_more_than_release_and_is_flagged(graded_class, attack):
    student = f"attack-{attack.replace('_', '-')}"
    result = graded_class["results"][student]
    expected = (ADVERSARIAL / f"{attack}.py").read_text().splitlines()[0]
    assert expected.startswith("# expect:"), f"{attack}.py must start with '# expect: <reason>'"
    wanted = {reason.strip() for reason in expected.split(":", 1)[1].split(",")}
    earned = [r.grade_id for r in result.results if r.points]
    assert not earned, f"Attack {attack} earned points in {earned} (the release earns none)"
    flagged = _flags(graded_class["lab"]).get(student, set())
    assert flagged & wanted, (
        f"Attack {attack} must be flagged with one of {sorted(wanted)}, got {sorted(flagged)}: "
        f"see tests/adversarial/{attack}.py and the grader's runner/verdict")


@pytest.mark.parametrize("student", sorted(CELL_EDITS))
def test_edited_and_deleted_tests_are_restored_and_flagged(graded_class, student):
    result = graded_class["results"][student]
    earned = [r.grade_id for r in result.results if r.points]
    assert not earned, f"{student}: the instructor's tests were not restored, points in {earned}"
    assert CELL_EDITS[student] in _flags(graded_class["lab"]).get(student, set()), (
        f"{student} must be flagged {CELL_EDITS[student]}: see plan.build_plan()")


def test_no_submission_was_changed_and_gradebook_equals_rescore(graded_class):
    from dlcloud_course.grader.gradebook import rescore_differences

    lab = graded_class["lab"]
    changed = [s for s, data in graded_class["before"].items()
               if (lab.grading_dir / "submitted" / s / LAB / f"{LAB}.ipynb").read_bytes() != data]
    assert not changed, f"Submissions changed while grading: {changed}"
    differences = rescore_differences(lab)
    assert not differences, f"Gradebook differs from the stored results: {differences[:5]}"


def test_feedback_shows_no_hidden_tests_or_solutions(graded_class):
    lab = graded_class["lab"]
    hidden = hidden_test_lines(LAB)
    solution_lines = ["return [step for step in STEPS if (state, step) in TRANSITIONS]",
                      "raise IllegalTransition(state, step, allowed_steps(state)) from None"]
    for student in graded_class["results"]:
        if student == HONEST:
            continue  # the honest student's feedback shows their own (correct) code
        for suffix in ("html", "txt"):
            text = html.unescape((lab.out("feedback", student) / f"{LAB}.{suffix}").read_text())
            leaked = [line for line in hidden + solution_lines if line in text]
            assert not leaked, f"Feedback {suffix} of {student} shows {leaked[:2]}: see feedback_text()"
            assert "BEGIN HIDDEN TESTS" not in text, f"Feedback of {student} shows hidden markers"
            assert len(text.encode()) <= 600 * 1024, f"Feedback of {student} is not size-capped"


def test_visible_failure_shows_that_check(graded_class):
    # In the release, load_flight_outcomes() is a stub: line 2 of this test raises.
    result = graded_class["results"][RELEASE]
    first = next(r for r in result.results if r.grade_id == "flight-lookup-finds-real-delays")
    assert "This check failed (line 2)" in first.feedback and "NotImplementedError" in first.feedback, (
        f"A NotImplementedError on the first visible line must be shown as that check, got "
        f"{first.feedback!r}: see verdict.feedback_for()")


def test_no_sandbox_is_left(graded_class):
    from dlcloud_course.grader.sandbox import leftovers

    left = leftovers(graded_class["client"], "dlcloud.grader.lab=" + LAB)
    assert not left, f"Sandbox containers left after grading: {left}; see run_in_sandbox()"


def test_sandbox_settings_are_locked_down():
    from dlcloud_course.grader.sandbox import Limits, container_settings

    settings = container_settings("image", Limits(), {}, None)
    assert settings["network_mode"] == "none" and settings["read_only"] is True
    assert settings["cap_drop"] == ["ALL"] and settings["security_opt"] == ["no-new-privileges"]
    assert settings["mem_limit"] == settings["memswap_limit"], "swap must not extend the memory limit"
    # Root with SETUID and SETGID only, for as long as it takes to start the worker as the
    # student's uid and become the supervisor's: see runner.supervise().
    assert settings["cap_add"] == ["SETUID", "SETGID"], "no capability beyond changing uid"
    assert settings["command"][-1] == "--split-uids", "the runner must split supervisor and worker"
    assert settings["init"] is True
    assert not settings["volumes"], "nothing of the course may be mounted into the sandbox"


def test_nbgrader_export_reads_the_grades(graded_class):
    lab = graded_class["lab"]
    export = lab.course / "grades.csv"
    nbgrader(lab.course, "export", "--to", str(export))
    # The course's nbgrader_config.py may fix the file's place in the grading folder.
    export = export if export.exists() else lab.grading_dir / "grades.csv"
    rows = {row["student_id"]: row for row in csv.DictReader(export.open())}
    assert float(rows[HONEST]["score"]) == sum(r.max_points for r in graded_class["results"][HONEST].results), (
        f"nbgrader export does not see the honest student's full marks: {rows.get(HONEST)}")
    assert float(rows[RELEASE]["score"]) == 0


def test_instructor_command_grades_and_rescores(tmp_path, docker_client, local_base_image, capsys):
    from dlcloud_course.grader.__main__ import main
    from dlcloud_course.grader.image import build_grading_image

    course = make_course(tmp_path, [LAB])
    nbgrader(course, "generate_assignment", LAB, "--force")
    folder = course / ".nbgrader" / "submitted" / RELEASE / LAB
    folder.mkdir(parents=True)
    (folder / f"{LAB}.ipynb").write_text((course / "labs" / LAB / f"{LAB}.ipynb").read_text())
    image = build_grading_image(docker_client, base=local_base_image)
    status = main(["grade", LAB, "--course", str(course), "--image", image, "--workers", "1"])
    printed = capsys.readouterr().out
    assert status == 0, f"the command failed (re-score mismatch or sandboxes left):\n{printed}"
    assert f"{RELEASE}\t0\t" in printed, f"the command must print each student's score:\n{printed}"
    assert (course / ".nbgrader" / "flags" / f"{LAB}.csv").exists(), "flags/<lab>.csv is missing"
