"""Regenerate labs/ (the student versions) from solutions/ with nbgrader.

Runs ``nbgrader generate_assignment`` for every lab folder in ``solutions/`` (or only
the labs named), which also records each lab in the instructor's gradebook. With
``--course-root DIR`` it works on another course folder instead of this repository.
tests/test_lab_sources.py checks that labs/ is what this produces.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from dlcloud.course import lab_names

REPO = Path(__file__).resolve().parent.parent


def generate(course_root: Path, labs: list[str] | None = None) -> None:
    venv_bin = Path(sys.executable).parent
    # nbgrader runs `alembic` from PATH to set up the gradebook: use the venv's.
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    for lab in labs or lab_names(course_root / "solutions"):
        print(f"generating labs/{lab}", flush=True)
        subprocess.run(
            [str(venv_bin / "nbgrader"), "generate_assignment", lab, "--force", "--log-level=WARN"],
            cwd=course_root,
            env=env,
            check=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--course-root", type=Path, default=REPO)
    parser.add_argument("labs", nargs="*", help="only these labs (default: all)")
    args = parser.parse_args()
    generate(args.course_root, args.labs)


if __name__ == "__main__":
    main()
