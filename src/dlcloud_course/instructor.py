"""The instructor's workflow with nbgrader, one command per step.

Each command runs the real nbgrader CLI in the course folder (this repository, or
``--course-root``) with the course's ``nbgrader_config.py``; every file it writes lands in
the grading folder (``.nbgrader/``, or ``DLCLOUD_GRADING_DIR``), never in the git tree::

    python -m dlcloud_course.instructor release LAB        # into the exchange, for the hub's students
    python -m dlcloud_course.instructor collect LAB        # the exchange's submissions
    python -m dlcloud_course.instructor zip-collect LAB ZIPDIR   # an LMS download (zip or notebooks)
    python -m dlcloud_course.instructor autograde LAB      # run every submission, hidden tests back in
    python -m dlcloud_course.instructor feedback LAB       # generate, and return what the exchange can
    python -m dlcloud_course.instructor export             # grades.csv in the grading folder
    python -m dlcloud_course.instructor formgrader         # the formgrader on 127.0.0.1

``feedback`` works around nbgrader 0.9.6's ``release_feedback``, which reads
``timestamp.txt`` and ``submission_secret.txt`` from every student's feedback folder
(``exchange/default/release_feedback.py``, ``copy_files``). Only ``nbgrader submit``
writes the secret (it names the student's copy of the feedback in the exchange, which
``fetch_feedback`` looks up from the student's own cache), and ``zip_collect`` writes the
timestamp only when the file name carries one. So a submission that came in through
``zip_collect`` has neither, and ``release_feedback`` without ``--student`` stops with
``FileNotFoundError`` at the first such student, after having released the feedback of
the students before it. Those students never used the
exchange, so there is nothing to release to them there: ``feedback`` leaves them out
(``--CourseDirectory.student_id_exclude``) and lists their HTML files to return through
the LMS.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXCHANGE_MODE = 0o777  # students write their submissions into it (nbgrader's documented setting)
SUBMISSION_SECRET = "submission_secret.txt"


@dataclass
class Course:
    """A course folder and the paths its nbgrader_config.py gives."""

    root: Path

    @functools.cached_property
    def _config(self):
        from traitlets.config.loader import PyFileConfigLoader

        return PyFileConfigLoader("nbgrader_config.py", path=str(self.root)).load_config()

    def config(self):
        return self._config

    def _path(self, value: str) -> Path:
        return (self.root / value).resolve()

    @property
    def course_id(self) -> str:
        return self.config().CourseDirectory.course_id

    @property
    def exchange(self) -> Path:
        return self._path(self.config().Exchange.root)

    @property
    def feedback_dir(self) -> Path:
        return self._path(self.config().CourseDirectory.feedback_directory)

    @property
    def submitted_dir(self) -> Path:
        return self._path(self.config().CourseDirectory.submitted_directory)

    @property
    def downloaded_dir(self) -> Path:
        return self._path(self.config().ZipCollectApp.downloaded_directory)

    @property
    def grades_csv(self) -> Path:
        return self._path(self.config().CsvExportPlugin.to)

    def nbgrader(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``nbgrader ARGS`` in the course folder, its output passed through."""
        venv_bin = Path(sys.executable).parent
        # nbgrader runs `alembic` from PATH to set up the gradebook: use this environment's.
        env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        print(f"$ nbgrader {' '.join(args)}", flush=True)
        result = subprocess.run(
            [str(venv_bin / "nbgrader"), *args], cwd=self.root, env=env, check=False
        )
        if check and result.returncode != 0:
            raise SystemExit(
                f"nbgrader {args[0]} failed (exit {result.returncode}): see its log above"
            )
        return result


def ensure_exchange(course: Course) -> Path:
    """The exchange folder, created so that students can write into it.

    Without it, release_assignment run as root makes one under /usr/local/share and
    students' `collect` then fails with "Unwritable directory".
    """
    exchange = course.exchange
    exchange.mkdir(parents=True, exist_ok=True)
    exchange.chmod(EXCHANGE_MODE)
    return exchange


def _warn_if_not_in_the_plan(course: Course, lab: str) -> None:
    plan = course.root / "release-plan.toml"
    if plan.exists() and lab not in tomllib.loads(plan.read_text()).get("labs", {}).get(
        "released", []
    ):
        print(
            f"note: {plan.name} does not list {lab} as released: the student edition leaves it out"
        )


def release(course: Course, lab: str, force: bool = False) -> None:
    _warn_if_not_in_the_plan(course, lab)
    exchange = ensure_exchange(course)
    course.nbgrader("release_assignment", lab, *(["--force"] if force else []))
    print(f"released {lab} to the exchange {exchange / course.course_id / 'outbound' / lab}")


def collect(course: Course, lab: str) -> None:
    ensure_exchange(course)
    course.nbgrader("collect", lab, "--update")


def zip_collect(course: Course, lab: str, zipdir: Path) -> None:
    """Copy an LMS download (zip files or notebooks) where zip_collect reads it, then run it."""
    files = sorted(p for p in zipdir.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"{zipdir} holds no file: download the LMS's submissions (a zip) into it")
    archive = course.downloaded_dir / lab / "archive"
    if archive.exists():
        shutil.rmtree(archive)
    archive.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, archive / path.name)
    course.nbgrader("zip_collect", lab, "--force")


def autograde(course: Course, lab: str, force: bool = False) -> None:
    # --create: students who handed in through the LMS are not in the gradebook yet.
    course.nbgrader("autograde", lab, "--create", *(["--force"] if force else []))


def students_without_exchange(course: Course, lab: str) -> list[str]:
    """Students whose feedback cannot go through the exchange: they never submitted there."""
    return sorted(
        folder.parent.name
        for folder in course.feedback_dir.glob(f"*/{lab}")
        if not (folder / SUBMISSION_SECRET).exists()
    )


def feedback(course: Course, lab: str) -> list[Path]:
    """Generate feedback; release it through the exchange; return the HTML to send by hand."""
    course.nbgrader("generate_feedback", lab, "--force")
    by_hand = students_without_exchange(course, lab)
    everyone = sorted(p.parent.name for p in course.feedback_dir.glob(f"*/{lab}"))
    if set(everyone) - set(by_hand):
        ensure_exchange(course)
        exclude = [f"--CourseDirectory.student_id_exclude={','.join(by_hand)}"] if by_hand else []
        course.nbgrader("release_feedback", lab, *exclude)
    pages = sorted(
        p for student in by_hand for p in (course.feedback_dir / student / lab).glob("*.html")
    )
    for page in pages:
        print(f"return through the LMS (handed in as a file): {page}")
    return pages


def export(course: Course) -> Path:
    course.nbgrader("export")
    print(f"grades written to {course.grades_csv}")
    return course.grades_csv


def formgrader_command(course: Course, port: int, token: str) -> list[str]:
    """A Jupyter server with nbgrader's formgrader, on loopback only, with token auth."""
    return [
        str(Path(sys.executable).parent / "jupyter"),
        "server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={course.root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.jpserver_extensions={'nbgrader.server_extensions.formgrader': True}",
        # Containers and CI run as root; the server still listens on loopback behind a token.
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]


def formgrader(course: Course, port: int) -> None:
    token = secrets.token_hex(16)
    print(f"formgrader: http://127.0.0.1:{port}/formgrader?token={token}", flush=True)
    os.execv(formgrader_command(course, port, token)[0], formgrader_command(course, port, token))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dlcloud_course.instructor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--course-root", type=Path, default=REPO, help="the course folder")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("release", "release LAB into the exchange"),
        ("collect", "collect LAB's submissions from the exchange"),
        ("autograde", "autograde every submission of LAB"),
        ("feedback", "generate LAB's feedback and return it"),
    ]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("lab")
        if name in ("release", "autograde"):
            command.add_argument("--force", action="store_true", help="redo what was done before")
    zip_command = commands.add_parser("zip-collect", help="collect LAB from an LMS download")
    zip_command.add_argument("lab")
    zip_command.add_argument("zipdir", type=Path, help="folder holding the LMS's zip or notebooks")
    commands.add_parser("export", help="write every grade to grades.csv in the grading folder")
    server = commands.add_parser("formgrader", help="start the formgrader on 127.0.0.1")
    server.add_argument("--port", type=int, default=8890)
    args = parser.parse_args(argv)

    course = Course(args.course_root.resolve())
    if args.command == "release":
        release(course, args.lab, args.force)
    elif args.command == "collect":
        collect(course, args.lab)
    elif args.command == "zip-collect":
        zip_collect(course, args.lab, args.zipdir.resolve())
    elif args.command == "autograde":
        autograde(course, args.lab, args.force)
    elif args.command == "feedback":
        feedback(course, args.lab)
    elif args.command == "export":
        export(course)
    else:
        formgrader(course, args.port)


if __name__ == "__main__":
    main()
