"""The instructor's workflow end to end, with the real nbgrader CLI and three synthetic students.

A temporary course gets the repository's ``nbgrader_config.py`` and lab 1 (the light lab).
Then, as in a term: ``python -m dlcloud_course.instructor release`` puts lab 1 in an
exchange under the grading folder; a correct student and a blank one fetch and submit
it through the exchange (same unix user, each with their own ``HOME``); a third hands it
in through the LMS, whose download of all submissions (a zip, Canvas's file names) goes
through ``zip-collect``; then ``collect``, ``autograde``, ``feedback`` (which must survive
nbgrader 0.9.6's ``release_feedback`` crash on zip-collected submissions, reproduced here
first), the students' ``fetch_feedback``, ``export`` and the formgrader's assignments API.
Nothing may be left behind in the git tree. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from dlcloud.net import free_port, wait_for_http
from dlcloud_course.checksums import EDITED_LOCKED_CELL

REPO = Path(__file__).resolve().parent.parent
LAB = "lab1-bpaas"
BIN = Path(sys.executable).parent
CORRECT, BLANK, BY_ZIP = "correct-student", "blank-student", "zip-student"
# The cell the zip student edits although it is locked: it also holds hidden tests.
TAMPERED_CELL = "state-machine-follows-happy-path"
# Canvas names a file in its download <login>[_LATE]_<user id>_<file id>_<uploaded name>.
CANVAS_FILE_NAME = f"{BY_ZIP}_LATE_4242_987654_{LAB}-1.ipynb"


def git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def base_env(course: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"DLCLOUD_EXCHANGE_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTERHUB_USER"}
    }
    return {
        **env,
        "DLCLOUD_GRADING_DIR": str(course / ".nbgrader"),
        # This checkout's packages, not an older editable install's.
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    }


def run(
    args: list[str], cwd: Path, env: dict, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    print(f"{time.monotonic() - started:6.1f} s  {' '.join(args[-3:])}")
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result


def render_lab(lab: str, source_dir: Path) -> None:
    """The lab rendered into nbgrader's source folder exactly as `make labs` renders it."""
    from dlcloud_course.generate import render_lab as render
    from dlcloud_course.labs import find

    render(find(lab), source_dir.parent)


@dataclass
class Term:
    course: Path
    env: dict
    homes: Path
    source_dir: Path = Path()
    outputs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def grading(self) -> Path:
        return self.course / ".nbgrader"

    def instructor(self, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
        result = run(
            [
                sys.executable,
                "-m",
                "dlcloud_course.instructor",
                "--course-root",
                str(self.course),
                *args,
            ],
            self.course,
            self.env,
            expect_ok,
        )
        self.outputs[args[0]] = result
        return result

    def raw_nbgrader(self, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
        return run([str(BIN / "nbgrader"), *args], self.course, self.env, expect_ok)

    def student_home(self, student: str) -> Path:
        home = self.homes / student
        if not home.exists():
            (home / ".jupyter").mkdir(parents=True)
            # What a hub's image gives each student: the course and the shared exchange.
            (home / ".jupyter" / "nbgrader_config.py").write_text(
                "c = get_config()\n"
                "c.CourseDirectory.course_id = 'deep-learning-in-the-cloud'\n"
                f"c.Exchange.root = {str(self.grading / 'exchange')!r}\n"
            )
        return home

    def student(self, student: str, *args: str) -> subprocess.CompletedProcess:
        home = self.student_home(student)
        env = {**self.env, "HOME": str(home), "JUPYTERHUB_USER": student}
        del env["DLCLOUD_GRADING_DIR"]
        return run([str(BIN / "nbgrader"), *args], home, env)

    def solution_sources(self) -> dict[str, str]:
        source = nbformat.read(self.source_dir / LAB / f"{LAB}.ipynb", as_version=4)
        return {
            cell.metadata["nbgrader"]["grade_id"]: cell.source
            for cell in source.cells
            if cell.metadata.get("nbgrader", {}).get("solution")
        }


def answer(
    notebook_path: Path, answers: dict[str, str], tamper: bool = False
) -> nbformat.NotebookNode:
    """The released notebook with the solution cells answered, as a good student hands it in."""
    notebook = nbformat.read(notebook_path, as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
        if tamper and grade_id == TAMPERED_CELL:
            cell.source += "\n# I changed this locked cell"
    return notebook


@pytest.fixture(scope="module")
def term(tmp_path_factory) -> Term:
    status_before = git_status()
    tmp = tmp_path_factory.mktemp("term")
    course = tmp / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    # nbgrader's source folder is whatever the course's config names: render lab 1 there.
    term = Term(course, base_env(course), tmp / "homes")
    term.source_dir = course / _config_value(term, "CourseDirectory", "source_directory")
    render_lab(LAB, term.source_dir / LAB)
    term.raw_nbgrader("generate_assignment", LAB, "--force")  # `make labs` in the repository

    term.instructor("release", LAB)
    answers = term.solution_sources()
    for student, answered in [(CORRECT, True), (BLANK, False)]:
        term.student(student, "fetch_assignment", LAB)
        fetched = term.student_home(student) / LAB / f"{LAB}.ipynb"
        if answered:
            nbformat.write(answer(fetched, answers), fetched)
        # Same unix user for all: nbgrader takes the student from --student, not the hub's user.
        term.student(student, "submit", LAB, f"--student={student}")
    term.instructor("collect", LAB)

    lms = tmp / "lms-download"
    lms.mkdir()
    handed_in = answer(course / "labs" / LAB / f"{LAB}.ipynb", answers, tamper=True)
    with zipfile.ZipFile(lms / "submissions.zip", "w") as archive:
        archive.writestr(CANVAS_FILE_NAME, nbformat.writes(handed_in))
    term.instructor("zip-collect", LAB, str(lms))
    term.instructor("autograde", LAB)

    # nbgrader's own release_feedback, as the formgrader's buttons run it.
    term.raw_nbgrader("generate_feedback", LAB, "--force")
    term.raw_nbgrader("release_feedback", LAB, "--student", CORRECT)
    term.outputs["raw release_feedback"] = term.raw_nbgrader(
        "release_feedback", LAB, expect_ok=False
    )

    term.instructor("feedback", LAB)
    term.student(CORRECT, "fetch_feedback", LAB)
    term.student(BLANK, "fetch_feedback", LAB)
    term.instructor("export")
    term.outputs["git status"] = subprocess.CompletedProcess([], 0, status_before, git_status())
    return term


def _config_value(term: Term, section: str, key: str) -> str:
    probe = (
        "from traitlets.config.loader import PyFileConfigLoader as L;"
        f"print(L('nbgrader_config.py', path='.').load_config().{section}.{key})"
    )
    return run([sys.executable, "-c", probe], term.course, term.env).stdout.strip()


def scores(term: Term) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{term.grading / 'gradebook.db'}") as gradebook:
        return {
            s.student.id: (s.score, s.max_score) for s in gradebook.find_assignment(LAB).submissions
        }


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_release_sets_up_an_exchange_students_can_write(term):
    exchange = term.grading / "exchange"
    assert exchange.is_dir(), (
        f"release did not create the exchange in the grading folder {term.grading}"
    )
    assert exchange.stat().st_mode & 0o777 == 0o777, (
        "students must be able to write into the exchange"
    )
    released = exchange / "deep-learning-in-the-cloud" / "outbound" / LAB / f"{LAB}.ipynb"
    assert released.exists(), f"release_assignment did not put {LAB} in the exchange: {released}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_submission_is_collected(term):
    submitted = sorted(p.name for p in (term.grading / "submitted").iterdir())
    assert submitted == sorted([CORRECT, BLANK, BY_ZIP]), (
        f"collect and zip-collect should bring in all three students, got {submitted}; "
        f"zip-collect output:\n{term.outputs['zip-collect'].stderr[-2000:]}"
    )
    by_zip = term.grading / "submitted" / BY_ZIP / LAB / f"{LAB}.ipynb"
    assert by_zip.exists(), (
        f"zip_collect did not map {CANVAS_FILE_NAME} to {by_zip}: see named_regexp"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_autograde_scores_each_student(term):
    graded = scores(term)
    correct, top = graded[CORRECT]
    assert top > 0 and correct == top, (
        f"the correct student should get full marks, got {graded[CORRECT]}"
    )
    assert graded[BLANK][0] == 0, f"the blank submission should score 0, got {graded[BLANK]}"
    assert graded[BY_ZIP][0] == top, (
        f"the zip student's answers are correct and the edited locked cell is restored: {graded[BY_ZIP]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_only_a_real_edit_of_a_locked_cell_is_reported(term):
    log = term.outputs["autograde"].stdout + term.outputs["autograde"].stderr
    checksum_lines = [line for line in log.splitlines() if "checksum" in line]
    expected = EDITED_LOCKED_CELL.format(name=TAMPERED_CELL)
    assert len(checksum_lines) == 1 and expected in checksum_lines[0], (
        "autograde should report exactly one changed locked cell (the zip student's edit of "
        f"{TAMPERED_CELL}), not the hidden-test cells; see dlcloud_course.checksums. Got:\n"
        + "\n".join(checksum_lines)
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_nbgrader_release_feedback_crashes_on_zip_collected_submissions(term):
    """The bug the feedback command works around (nbgrader 0.9.6): if this fails, nbgrader fixed it."""
    raw = term.outputs["raw release_feedback"]
    # It reads timestamp.txt, then submission_secret.txt: zip_collect writes the first only
    # when the file name carries a time (Canvas's do not), and never the second.
    missing = [name for name in ("timestamp.txt", "submission_secret.txt") if name in raw.stderr]
    assert raw.returncode != 0 and "FileNotFoundError" in raw.stderr and missing, (
        "nbgrader's release_feedback no longer stops on a zip-collected submission: the workaround "
        f"in dlcloud_course.instructor.feedback may go. Its output:\n{raw.stderr[-2000:]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_feedback_reaches_every_student(term):
    for student in (CORRECT, BLANK):
        pages = list((term.student_home(student) / LAB / "feedback").rglob(f"{LAB}.html"))
        assert pages, (
            f"{student} fetched no feedback from the exchange; feedback output:\n{term.outputs['feedback'].stdout}"
        )
    out = term.outputs["feedback"].stdout
    zip_page = term.grading / "feedback" / BY_ZIP / LAB / f"{LAB}.html"
    assert f"return through the LMS (handed in as a file): {zip_page}" in out, (
        f"feedback should list the zip student's page for the LMS, got:\n{out}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_grades_are_exported_inside_the_grading_folder(term):
    grades = term.grading / "grades.csv"
    assert grades.exists(), (
        f"export wrote no {grades}: see CsvExportPlugin.to in nbgrader_config.py"
    )
    rows = {row["student_id"]: row for row in csv.DictReader(grades.open())}
    assert set(rows) >= {CORRECT, BLANK, BY_ZIP}, f"grades.csv lacks students: {sorted(rows)}"
    assert float(rows[BLANK]["score"]) == 0, (
        f"grades.csv: the blank student scored {rows[BLANK]['score']}"
    )
    assert not (term.course / "grades.csv").exists(), "grades.csv was written to the course root"
    assert not (term.course / "downloaded").exists(), (
        "zip_collect used downloaded/ in the course root"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_no_file_is_left_in_the_git_tree(term):
    before, after = term.outputs["git status"].stdout, term.outputs["git status"].stderr
    assert after == before, (
        f"the workflow changed the git tree; git status before:\n{before}\nafter:\n{after}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_formgrader_lists_the_labs(term, tmp_path):
    from dlcloud_course.instructor import Course, formgrader_command

    port, token = free_port(), "workflow-test-token"
    env = {**term.env, "HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = subprocess.Popen(
        formgrader_command(Course(term.course), port, token),
        cwd=term.course,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/status?token={token}", timeout_s=60)

        def get(path: str) -> str:
            request = urllib.request.Request(
                base + path, headers={"Authorization": f"token {token}"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read().decode()

        assignments = {a["name"]: a for a in json.loads(get("/formgrader/api/assignments"))}
        assert LAB in assignments, f"the formgrader lists {sorted(assignments)}, not {LAB}"
        assert assignments[LAB]["num_submissions"] == 3, f"formgrader: {assignments[LAB]}"
        assert "Manage Assignments" in get("/formgrader/manage_assignments"), (
            "formgrader page did not render"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize(
    "file_name, student, notebook",
    [
        (f"ada_4242_987654_{LAB}.ipynb", "ada", LAB),
        (f"ada_LATE_4242_987654_{LAB}.ipynb", "ada", LAB),
        (f"ada-l_4242_987654_{LAB}-2.ipynb", "ada-l", LAB),
    ],
)
def test_zip_collect_pattern_reads_canvas_file_names(file_name, student, notebook):
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    pattern = config.FileNameCollectorPlugin.named_regexp
    match = re.match(pattern, f"/grading/downloaded/{LAB}/extracted/{file_name}")
    assert match, f"named_regexp in nbgrader_config.py does not match Canvas's {file_name}"
    assert (match["student_id"], match["file_id"]) == (student, notebook), (
        f"named_regexp read {file_name} as {match.groupdict()}"
    )


def test_students_without_exchange_are_those_without_a_secret(tmp_path):
    from dlcloud_course.instructor import Course, students_without_exchange

    (tmp_path / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.feedback_directory = 'fb'\n"
    )
    for student, secret in [("via-exchange", True), ("via-lms", False)]:
        folder = tmp_path / "fb" / student / LAB
        folder.mkdir(parents=True)
        if secret:
            (folder / "submission_secret.txt").write_text("s")
    assert students_without_exchange(Course(tmp_path), LAB) == ["via-lms"], (
        "only a feedback folder without submission_secret.txt is one release_feedback cannot handle"
    )
