"""Helpers for the tests that run labs through nbgrader's real CLI and gradebook."""

from __future__ import annotations

import os
from collections import Counter
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dlcloud import course as course_layout
from dlcloud.course import read_notebook  # noqa: F401 -- re-exported for the tests

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
LABS = REPO / "labs"
BIN = Path(sys.executable).parent
GRADE_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
NBGRADER_DEFAULT_ID = re.compile(r"^cell-[0-9a-f]{8,}$")
MEANINGFUL_LINE_LENGTH = 12


def lab_names() -> list[str]:
    """Every lab in solutions/, so that a new lab is covered without touching the tests."""
    return course_layout.lab_names(SOLUTIONS)


def lab_notebooks(lab: str, root: Path = SOLUTIONS) -> list[Path]:
    return course_layout.lab_notebooks(root / lab)


def nbgrader_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if "nbgrader" in c.get("metadata", {})]


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def lab_needs(lab: str) -> set[str]:
    """What a lab needs beyond Python (``{"docker"}``): notebook metadata ``dlcloud.needs``."""
    return course_layout.lab_needs(SOLUTIONS / lab)


def make_course(tmp: Path, labs: list[str]) -> Path:
    """A throw-away course directory with the repository's nbgrader config and these labs."""
    course = tmp / "course"
    (course / "solutions").mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for lab in labs:
        shutil.copytree(
            SOLUTIONS / lab,
            course / "solutions" / lab,
            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc"),
        )
    return course


def nbgrader(course: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real nbgrader CLI in ``course``; fail with its output if it fails."""
    merged_env = {
        **os.environ,
        **(env or {}),
        "DLCLOUD_GRADING_DIR": str(course / ".nbgrader"),
        # nbgrader runs `alembic` from PATH to set up the gradebook: use the venv's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        [str(BIN / "nbgrader"), *args],
        cwd=course,
        env=merged_env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def hidden_test_lines(lab: str) -> list[str]:
    """Lines that only hidden tests contain: what must never reach a student.

    Lines that also appear outside the hidden regions (``else:``, ``)``, a shared
    assertion) say nothing about the hidden tests, so they are left out.
    """
    from dlcloud.grading import hidden_test_lines as lines_of

    sources = [source_of(c) for path in lab_notebooks(lab) for c in read_notebook(path)["cells"]]
    all_lines = Counter(line.strip() for source in sources for line in source.splitlines())
    hidden = Counter(line.strip() for source in sources for line in lines_of(source))
    visible = all_lines - hidden
    return sorted(
        line
        for line in hidden
        # Very short lines ("pass", "])") would match ordinary words of any page.
        if len(line) >= MEANINGFUL_LINE_LENGTH and not line.startswith("#") and line not in visible
    )
