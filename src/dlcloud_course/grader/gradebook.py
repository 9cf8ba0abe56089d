"""Grade a lab for every collected submission: sandboxes, gradebook, feedback, flags, re-score.

Layout (nbgrader's, under the grading folder ``.nbgrader/`` or ``DLCLOUD_GRADING_DIR``):
``submitted/<student>/<lab>/<lab>.ipynb`` in; out go the gradebook's ``auto_score`` of
every test cell, ``autograded/<student>/<lab>/<lab>.ipynb`` (instructor-only: the
instructor's cells with the student's solutions), ``autograded/<student>/<lab>/grader-result.json``
(what the score was computed from), ``feedback/<student>/<lab>/<lab>.html`` and ``.txt``
(release text, the student's own code, the instructor's messages), and ``flags/<lab>.csv``.
Everything here runs on the host and never executes a submission.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .plan import (
    InstructorCell,
    build_plan,
    cell_source,
    instructor_cells,
    load_submission,
    read_notebook,
)
from .sandbox import Limits, run_in_sandbox
from .verdict import TestResult, finished, score, verified_records

MAX_FEEDBACK_BYTES = 512 * 1024
MAX_SHIPPED_BYTES = 4 * 1024 * 1024
#: Where nbgrader's source of a lab may be: the notebook `make labs` renders, or (older
#: layout) the authored notebook or its jupytext text in solutions/.
SOURCE_FOLDERS = ("build/source", "solutions")
MAX_STUDENT_CELL_CHARS = 20_000
HTML_HEAD = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback</title>"
    "<style>pre{background:#f6f6f6;padding:.5em}.message{background:#fff3cd}</style>"
    "</head><body>"
)


@dataclass
class StudentResult:
    student: str
    results: list[TestResult]
    flags: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    sandbox_s: float = 0.0
    submission_sha256: str = ""
    notebook_s: float = 0.0  # executing the cells, as the runner measured it
    checks_s: float = 0.0  # the integrity checks before the verdicts

    @property
    def total(self) -> float:
        return sum(result.points for result in self.results)


@dataclass
class Lab:
    """Where one lab's instructor files and its grading folder are."""

    course: Path
    name: str
    grading_dir: Path

    @classmethod
    def at(cls, course: Path, name: str) -> Lab:
        default = course / ".nbgrader"
        grading = Path(os.environ.get("DLCLOUD_GRADING_DIR", default))
        return cls(course, name, grading if grading.is_absolute() else course / grading)

    def _notebook(self, *folders: str) -> Path:
        tried = []
        for folder in folders:
            base = self.course / folder / self.name / self.name
            for suffix in (".ipynb", ".py"):
                tried.append(base.with_suffix(suffix))
                if tried[-1].exists():
                    return tried[-1]
        raise FileNotFoundError(f"none of {', '.join(map(str, tried))} exists")

    def source_path(self) -> Path:
        """nbgrader's source notebook: rendered by `make labs`, or the authored text."""
        return self._notebook(*SOURCE_FOLDERS)

    def cells(self) -> list[InstructorCell]:
        return instructor_cells(read_notebook(self.source_path()),
                                read_notebook(self._notebook("labs")))

    def release_notebook(self) -> dict:
        return read_notebook(self._notebook("labs"))

    def shipped_files(self) -> dict[str, str]:
        """The release's other files (manifests, a .proto: what students get next to the
        notebook), base64 by relative path; they travel in the plan, nothing is mounted."""
        release = self.course / "labs" / self.name
        files, total = {}, 0
        for path in sorted(release.rglob("*")) if release.is_dir() else []:
            relative = path.relative_to(release)
            if path.is_dir() or path.suffix == ".ipynb" or ".ipynb_checkpoints" in relative.parts:
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_SHIPPED_BYTES:
                raise RuntimeError(f"{release}: more than {MAX_SHIPPED_BYTES} bytes of files to ship")
            files[relative.as_posix()] = base64.b64encode(data).decode()
        return files

    def students(self) -> list[str]:
        submitted = self.grading_dir / "submitted"
        return sorted(p.name for p in submitted.iterdir() if (p / self.name).is_dir()) \
            if submitted.is_dir() else []

    def submission(self, student: str) -> Path:
        return self.grading_dir / "submitted" / student / self.name / f"{self.name}.ipynb"

    def out(self, kind: str, student: str) -> Path:
        return self.grading_dir / kind / student / self.name

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.grading_dir / 'gradebook.db'}"


@dataclass
class Prepared:
    """A submission read and planned on the host, before its sandbox runs."""

    student: str
    plan: object | None  # plan.Plan, or None when the submission cannot be read
    problem: str | None
    sha256: str
    started: float


def prepare(lab: Lab, cells: list[InstructorCell], student: str) -> Prepared:
    # In the main thread: CPython 3.11's ast module is not safe to use from many threads.
    started = time.monotonic()
    path = lab.submission(student)
    submission, problem = load_submission(path)
    plan = build_plan(cells, submission) if submission is not None else None
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
    return Prepared(student, plan, problem, digest, started)


def sandbox_of(client, image: str, prepared: Prepared, limits: Limits, labels: dict[str, str],
               policy: dict | None = None, files: dict[str, str] | None = None,
               engine: bool = False, backend=None):
    """The only step that runs in a worker thread: one container, one fresh key, and for
    a lab that builds images (``engine``) an engine broker of its own.

    ``backend(student, plan_cells, key, limits, policy, files)`` runs the sandbox elsewhere
    (a Kubernetes Job: :func:`.kubernetes.cluster_backend`) and returns a SandboxResult.
    """
    if prepared.plan is None:
        return None, b""
    key = secrets.token_bytes(32)
    if backend is not None:
        return backend(prepared.student, prepared.plan.cells, key, limits, policy, files), key
    labels = {**labels, "dlcloud.grader.student": _label_safe(prepared.student)}
    broker = None
    if engine:
        from .engine_broker import submission_broker

        broker = submission_broker(client)
        broker.start()
    return run_in_sandbox(client, image, prepared.plan.cells, key, limits, labels=labels,
                          policy=policy, files=files, engine=broker), key


def conclude(cells: list[InstructorCell], prepared: Prepared, sandbox, key: bytes) -> StudentResult:
    """Verify the records and score them, on the host, from data that crossed the boundary."""
    if sandbox is None:
        results, _ = score(cells, [])
        return StudentResult(prepared.student, results, [("unreadable-submission", prepared.problem)],
                             time.monotonic() - prepared.started, 0.0, prepared.sha256)
    records, forged = verified_records(sandbox.output, key)
    results, runner_flags = score(cells, records)
    flags = [*prepared.plan.flags, *sandbox.flags, *forged, *runner_flags]
    if not finished(records) and not any(r in ("timeout", "memory-limit", "output-limit")
                                         for r, _ in sandbox.flags):
        flags.append(("did-not-finish", f"the run ended early (exit code {sandbox.exit_code})"))
    done = next((r for r in records if r.get("kind") == "done"), {})
    return StudentResult(prepared.student, results, _unique(flags),
                         time.monotonic() - prepared.started, sandbox.wall_s, prepared.sha256,
                         _seconds(done.get("cells_s")), _seconds(done.get("checks_s")))


def _seconds(value) -> float:
    return float(value) if isinstance(value, (int, float)) and 0 <= value < 1e6 else 0.0


def _unique(flags):
    seen, unique = set(), []
    for flag in flags:
        if flag not in seen:
            seen.add(flag)
            unique.append(flag)
    return unique


def _label_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:60]


def grade_lab(client, image: str, lab: Lab, workers: int = 1, limits: Limits | None = None,
              labels: dict[str, str] | None = None, policy=None, backend=None) -> list[StudentResult]:
    """Grade every collected submission of ``lab`` with ``workers`` sandboxes at a time.

    ``policy`` (a :class:`.policy.LabPolicy`) defaults to the lab's own, from its
    lab.toml; ``limits`` overrides the policy's limits. ``backend`` runs each sandbox
    somewhere else than this Docker Engine (see :func:`sandbox_of`).
    """
    from .policy import lab_policy

    policy = policy or lab_policy(lab.course, lab.name)
    limits = limits or policy.limits
    if policy.engine:
        # One submission at a time on the engine: the legacy builder's cache is the
        # engine's, so two submissions with identical steps would build on each other's
        # layers, and one's cleanup would take away what the other's rebuild counts on.
        # In sequence, each run starts after the last one's images are gone.
        workers = 1
    cells = lab.cells()
    students = lab.students()
    labels = {"dlcloud.grader.lab": lab.name, **(labels or {})}
    files = lab.shipped_files()
    prepared = [prepare(lab, cells, student) for student in students]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ran = list(pool.map(lambda p: sandbox_of(client, image, p, limits, labels,
                                                 policy.for_runner(), files, policy.engine,
                                                 backend),
                            prepared))
    graded = [conclude(cells, p, sandbox, key) for p, (sandbox, key) in zip(prepared, ran)]
    release = lab.release_notebook()
    source = read_notebook(lab.source_path())
    for result in graded:
        write_outputs(lab, cells, release, source, result)
    write_gradebook(lab, cells, graded)
    write_flags(lab, graded)
    return graded


# --- what goes back to students ------------------------------------------------------------

def _student_sources(lab: Lab, student: str) -> dict[str, str]:
    submission, _ = load_submission(lab.submission(student))
    sources = {}
    for cell in (submission or {}).get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {}) if isinstance(cell, dict) else {}
        if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
            sources.setdefault(meta["grade_id"], cell_source(cell)[:MAX_STUDENT_CELL_CHARS])
    return sources


def feedback_text(lab: Lab, cells: list[InstructorCell], release: dict,
                  result: StudentResult) -> list[tuple[str, str, str]]:
    """(kind, title, text) blocks: release text, the student's own code, our messages."""
    kinds = {cell.grade_id: cell for cell in cells}
    by_test = {r.grade_id: r for r in result.results}
    mine = _student_sources(lab, result.student)
    max_total = sum(cell.points for cell in cells if cell.kind == "test")
    blocks = [("title", f"{lab.name}: {result.total:g} / {max_total:g}", "")]
    for cell in release["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        instructor = kinds.get(grade_id)
        if cell.get("cell_type") == "markdown":
            blocks.append(("markdown", "", cell_source(cell)))
        elif instructor is not None and instructor.kind == "solution":
            blocks.append(("student", f"your code ({grade_id})", mine.get(grade_id, instructor.released)))
        elif instructor is not None and instructor.kind == "test":
            test = by_test[grade_id]
            blocks.append(("test", f"{grade_id}: {test.points:g} / {test.max_points:g}",
                           instructor.released))
            blocks.append(("message", "", test.feedback))
        else:
            blocks.append(("code", "", cell_source(cell)))
    return blocks


def render_html(blocks) -> str:
    parts = [HTML_HEAD]
    for kind, title, text in blocks:
        if kind == "title":
            parts.append(f"<h1>{html.escape(title)}</h1>")
            continue
        if title:
            parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(f"<pre class='{kind}'>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return _capped("".join(parts), "</pre></body></html>")


def render_text(blocks) -> str:
    lines = []
    for kind, title, text in blocks:
        if kind in ("title", "test", "message"):
            lines.append(f"{title}\n{text}".strip() if kind != "message" else f"  -> {text}")
    return _capped("\n".join(lines) + "\n", "\n")


def _capped(text: str, tail: str) -> str:
    data = text.encode()
    if len(data) <= MAX_FEEDBACK_BYTES:
        return text
    cut = data[:MAX_FEEDBACK_BYTES - 200].decode(errors="ignore")
    return cut + "\n[feedback cut at the size limit]" + tail


def autograded_notebook(source: dict, cells: list[InstructorCell], student_sources: dict[str, str],
                        result: StudentResult) -> dict:
    """The instructor's notebook with this student's solutions and our verdicts as outputs."""
    notebook = json.loads(json.dumps(source))
    kinds = {cell.grade_id: cell.kind for cell in cells}
    by_test = {r.grade_id: r for r in result.results}
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"], cell["execution_count"] = [], None
        if kinds.get(grade_id) == "solution":
            cell["source"] = student_sources.get(grade_id, "")
        elif kinds.get(grade_id) == "test":
            test = by_test[grade_id]
            cell["outputs"] = [{"output_type": "stream", "name": "stdout",
                                "text": f"[{test.status}] {test.points:g}/{test.max_points:g}\n"
                                        f"{test.feedback}\n"}]
    notebook.setdefault("metadata", {})["dlcloud_grader"] = {
        "flags": [list(flag) for flag in result.flags], "total": result.total}
    return notebook


def write_outputs(lab: Lab, cells, release, source, result: StudentResult) -> None:
    autograded = lab.out("autograded", result.student)
    autograded.mkdir(parents=True, exist_ok=True)
    stored = {"student": result.student, "lab": lab.name, "total": result.total,
              "submission_sha256": result.submission_sha256, "flags": result.flags,
              "wall_s": round(result.wall_s, 3), "sandbox_s": round(result.sandbox_s, 3),
              "notebook_s": result.notebook_s, "checks_s": result.checks_s,
              "results": [asdict(r) for r in result.results]}
    (autograded / "grader-result.json").write_text(json.dumps(stored, indent=1))
    notebook = autograded_notebook(source, cells, _student_sources(lab, result.student), result)
    (autograded / f"{lab.name}.ipynb").write_text(json.dumps(notebook, indent=1))
    feedback = lab.out("feedback", result.student)
    feedback.mkdir(parents=True, exist_ok=True)
    blocks = feedback_text(lab, cells, release, result)
    (feedback / f"{lab.name}.html").write_text(render_html(blocks))
    (feedback / f"{lab.name}.txt").write_text(render_text(blocks))


# --- the gradebook, flags and the re-score check ----------------------------------------------

def write_gradebook(lab: Lab, cells: list[InstructorCell], graded: list[StudentResult]) -> None:
    """Scores into nbgrader's gradebook, as ``nbgrader autograde`` would leave them."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(lab.db_url) as gradebook:
        try:
            gradebook.find_assignment(lab.name)
        except MissingEntry:
            raise RuntimeError(
                f"{lab.name} is not in the gradebook {lab.db_url}: run "
                f"`nbgrader generate_assignment {lab.name}` (make labs) first") from None
        for result in graded:
            gradebook.update_or_create_student(result.student)
            gradebook.update_or_create_submission(lab.name, result.student)
            flagged = bool(result.flags)
            for test in result.results:
                grade = gradebook.find_grade(test.grade_id, lab.name, lab.name, result.student)
                grade.auto_score = test.points
                grade.needs_manual_grade = flagged and test.status != "pass"
            gradebook.db.commit()


def write_flags(lab: Lab, graded: list[StudentResult]) -> Path:
    path = lab.grading_dir / "flags" / f"{lab.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "reason", "detail"])
        for result in graded:
            for reason, detail in result.flags:
                writer.writerow([result.student, reason, detail])
    return path


def rescore_differences(lab: Lab) -> list[str]:
    """Where the gradebook differs from a recomputation from the stored results (none: good)."""
    from nbgrader.api import Gradebook

    differences = []
    with Gradebook(lab.db_url) as gradebook:
        for submission in gradebook.assignment_submissions(lab.name):
            stored_path = lab.out("autograded", submission.student.id) / "grader-result.json"
            if not stored_path.exists():
                differences.append(f"{submission.student.id}: in the gradebook, never graded here")
                continue
            stored = json.loads(stored_path.read_text())
            expected = {r["grade_id"]: (r["max_points"] if r["status"] == "pass" else 0.0)
                        for r in stored["results"]}
            for grade_id, points in expected.items():
                grade = gradebook.find_grade(grade_id, lab.name, lab.name, submission.student.id)
                if grade.auto_score != points:
                    differences.append(f"{submission.student.id}/{grade_id}: gradebook "
                                       f"{grade.auto_score}, recomputed {points}")
    return differences
