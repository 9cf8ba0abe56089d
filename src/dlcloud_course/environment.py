"""Derive environment.yml and binder/ from requirements.lock, the one pinned lock.

``python -m dlcloud_course.environment`` (``make env``) writes the files; ``--check`` only compares and exits
1 naming every file that disagrees (tests/test_environment.py runs the same check).
Standard library only, so it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
PYTHON_VERSION = "3.11"
# What Binder (repo2docker) installs from Debian: Java 17 for Spark. The book's diagrams need
# no system Graphviz: the graphviz-pure wheel of the lock draws them.
APT_PACKAGES = ["openjdk-17-jre-headless"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]+\])?)==([^\s;#]+)")

HEADER = "# Generated from requirements.lock by `make env` (dlcloud_course.environment): do not edit.\n"


def locked_pins(lock_text: str) -> list[str]:
    """``name==version`` for every package pinned in the lock, in the lock's order."""
    pins = []
    for line in lock_text.splitlines():
        match = PIN.match(line.strip())
        if match:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def derived_files(lock_text: str) -> dict[Path, str]:
    pins = locked_pins(lock_text)
    pip_lines = "".join(f"      - {pin}\n" for pin in pins)
    environment_yml = (
        HEADER
        + "# For conda users; the Makefile and CI use requirements.lock with pip directly.\n"
        + "name: dlcloud\nchannels:\n  - conda-forge\ndependencies:\n"
        + f"  - python={PYTHON_VERSION}\n  - pip\n  - openjdk=17\n"
        + "  - pip:\n" + pip_lines + "      - -e .\n"
    )
    return {
        REPO / "environment.yml": environment_yml,
        REPO / "binder" / "requirements.txt": HEADER + "".join(f"{pin}\n" for pin in pins),
        REPO / "binder" / "runtime.txt": f"python-{PYTHON_VERSION}\n",
        REPO / "binder" / "apt.txt": "".join(f"{name}\n" for name in APT_PACKAGES),
        REPO / "binder" / "postBuild": (
            "#!/bin/bash\n" + HEADER
            + "set -eo pipefail\n# The course's helper package, without touching the pinned dependencies.\n"
            + "pip install --no-deps -e .\n"
            + "# Students' nbgrader settings wherever a lab is opened (Validate's timeout), and no\n"
            + "# instructor tools; Binder has no exchange, so no assignment list either.\n"
            + "mkdir -p \"$HOME/.jupyter\"\n"
            + "cp docker/nbgrader_config.py \"$HOME/.jupyter/nbgrader_config.py\"\n"
            + "jupyter server extension disable --sys-prefix nbgrader.server_extensions.formgrader \\\n"
            + "    nbgrader.server_extensions.course_list nbgrader.server_extensions.assignment_list\n"
            + "jupyter labextension disable --level=sys_prefix @jupyter/nbgrader:formgrader \\\n"
            + "    @jupyter/nbgrader:course-list @jupyter/nbgrader:create-assignment \\\n"
            + "    @jupyter/nbgrader:assignment-list\n"
        ),
    }


def stale_files(lock_text: str) -> list[str]:
    """Derived files whose content differs from what the lock gives."""
    return [
        str(path.relative_to(REPO))
        for path, content in derived_files(lock_text).items()
        if not path.exists() or path.read_text() != content
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = parser.parse_args()
    lock_text = LOCK.read_text()
    if args.check:
        stale = stale_files(lock_text)
        for name in stale:
            print(f"{name} disagrees with requirements.lock: run `make env`", file=sys.stderr)
        return 1 if stale else 0
    for path, content in derived_files(lock_text).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if path.name == "postBuild":
            path.chmod(0o755)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
