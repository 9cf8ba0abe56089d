"""Every lab in solutions/ through the real nbgrader: generate, submit, autograde, feedback.

The author's solution, submitted as a student, must earn full marks; the released
version, submitted untouched, must earn zero autograded points; feedback must not
show hidden tests; nbgrader's own Validator must pass the one and fail the other.

Each lab's notebooks are executed twice (solution and release), by autograde. The
Validator then checks those executed notebooks as they are: it is nbgrader's own
Validator with its Execute step left out, since executing the same notebooks again
would only repeat what autograde just did (and cost half of this module's time).
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtools import (
    REPO,
    SOURCE_DIR,
    hidden_test_lines,
    lab_names,
    lab_needs,
    make_course,
    nbgrader,
)

# A student's machine may log far more than CI's: the solution must still earn full marks
# (nbgrader fails a graded cell that writes to stderr), so every lab is graded like this.
NOISY_LOGGING = {
    "TF_CPP_MIN_LOG_LEVEL": "0",  # TensorFlow's C++ INFO lines
    "GRPC_VERBOSITY": "debug",  # every gRPC core log line
    "GRPC_TRACE": "api,handshaker",  # and traces
}

SOLUTION_AUTHOR = "solution-author"  # submits the instructor's solution
FRESH_STUDENT = "fresh-student"  # submits the released notebook untouched


@dataclass
class GradedLab:
    lab: str
    course: Path
    env: dict

    @property
    def grading_dir(self) -> Path:
        return self.course / ".nbgrader"

    def submission(self, student: str):
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.grading_dir / 'gradebook.db'}") as gradebook:
            submission = gradebook.find_submission(self.lab, student)
            grades = [
                (grade.name, grade.auto_score, grade.max_score)
                for notebook in submission.notebooks
                for grade in notebook.grades
            ]
            return grades

    def manually_graded(self, student: str) -> list[str]:
        """The cells nbgrader leaves for a human (written answers) in the formgrader."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.grading_dir / 'gradebook.db'}") as gradebook:
            submission = gradebook.find_submission(self.lab, student)
            return [grade.name for notebook in submission.notebooks for grade in notebook.grades
                    if grade.needs_manual_grade]

    def feedback_html(self, student: str) -> str:
        pages = sorted((self.grading_dir / "feedback" / student / self.lab).glob("*.html"))
        assert pages, f"nbgrader generate_feedback wrote no HTML for {student}"
        return "\n".join(html.unescape(page.read_text()) for page in pages)


def _needs_env(request, lab: str) -> dict:
    """Start what the lab needs (a Docker Engine and the local base image) or skip/fail."""
    env = {}
    if "docker" in lab_needs(lab):
        request.getfixturevalue("docker_client")
        env["DLCLOUD_BASE_IMAGE"] = request.getfixturevalue("local_base_image")
    return env


@pytest.fixture(scope="module", params=lab_names())
def graded_lab(request, tmp_path_factory) -> GradedLab:
    lab = request.param
    env = _needs_env(request, lab)
    course = make_course(tmp_path_factory.mktemp(lab), [lab])
    nbgrader(course, "generate_assignment", lab, "--force")
    submitted = course / ".nbgrader" / "submitted"
    shutil.copytree(course / SOURCE_DIR / lab, submitted / SOLUTION_AUTHOR / lab)
    shutil.copytree(course / "labs" / lab, submitted / FRESH_STUDENT / lab)
    nbgrader(course, "autograde", lab, "--create", "--force", env={**env, **NOISY_LOGGING})
    nbgrader(course, "generate_feedback", lab, "--force")
    return GradedLab(lab, course, env)


@pytest.mark.slow
def test_solution_earns_full_marks(graded_lab):
    """Full marks on every autograded cell; written answers wait for a human, in the formgrader."""
    grades = graded_lab.submission(SOLUTION_AUTHOR)
    autograded = [(name, auto, top) for name, auto, top in grades if auto is not None]
    assert autograded, f"{graded_lab.lab} has no autograded cells"
    lost = [(name, auto, top) for name, auto, top in autograded if auto != top]
    assert not lost, f"{graded_lab.lab}: the solution lost points in {lost}"
    by_hand = {name for name, auto, _ in grades if auto is None}
    assert by_hand == set(graded_lab.manually_graded(SOLUTION_AUTHOR)), (
        f"{graded_lab.lab}: cells without an automatic score {sorted(by_hand)} must be the written answers "
        "that nbgrader marks for manual grading")


@pytest.mark.slow
def test_released_lab_earns_zero_autograded_points(graded_lab):
    grades = graded_lab.submission(FRESH_STUDENT)
    earned = [(name, auto) for name, auto, _ in grades if auto]
    assert not earned, f"{graded_lab.lab}: the untouched release earns points in {earned}"


@pytest.mark.slow
@pytest.mark.parametrize("student", [SOLUTION_AUTHOR, FRESH_STUDENT])
def test_feedback_shows_no_hidden_tests(graded_lab, student):
    feedback = graded_lab.feedback_html(student)
    leaked = [line for line in hidden_test_lines(graded_lab.lab) if line in feedback]
    assert "BEGIN HIDDEN TESTS" not in feedback
    assert not leaked, f"{graded_lab.lab}: feedback for {student} shows hidden test lines {leaked[:3]}"


def _validate(graded_lab: GradedLab, student: str, tmp_path: Path) -> dict:
    """nbgrader's Validator on the notebooks autograde executed, without executing them again."""
    from nbgrader.preprocessors import CheckCellMetadata
    from nbgrader.validator import Validator
    from traitlets.config.loader import PyFileConfigLoader

    folder = tmp_path / student
    shutil.copytree(graded_lab.grading_dir / "autograded" / student / graded_lab.lab, folder)
    config = PyFileConfigLoader(str(graded_lab.course / "nbgrader_config.py")).load_config()
    results = {}
    for notebook in sorted(folder.glob("*.ipynb")):
        validator = Validator(config=config, preprocessors=[CheckCellMetadata])
        results[notebook.name] = validator.validate(str(notebook))
    return results


@pytest.mark.slow
def test_validator_passes_solution(graded_lab, tmp_path):
    results = _validate(graded_lab, SOLUTION_AUTHOR, tmp_path)
    problems = {name: result for name, result in results.items() if result}
    assert not problems, f"{graded_lab.lab}: Validator rejects the solution: {problems}"


@pytest.mark.slow
def test_validator_fails_released_lab(graded_lab, tmp_path):
    results = _validate(graded_lab, FRESH_STUDENT, tmp_path)
    passing = [name for name, result in results.items() if not result.get("failed")]
    assert not passing, f"{graded_lab.lab}: Validator passes the untouched release of {passing}"


def test_every_lab_is_in_the_book(repo_root):
    toc = (REPO / "_toc.yml").read_text()
    missing = [lab for lab in lab_names() if f"labs/{lab}/{lab}" not in toc]
    assert not missing, f"labs missing from _toc.yml: {missing}"
