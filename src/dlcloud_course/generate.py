"""``make labs``: render every lab's text source, then let nbgrader write the student versions.

For each lab, :func:`render_lab` writes ``build/source/<lab>/`` (ignored by git): the
notebook rendered from ``<lab>.py``, the files the lab ships, and the files its manifest
says are generated. ``nbgrader_config.py`` points nbgrader's source folder there, so
``nbgrader generate_assignment`` then writes ``labs/<lab>/`` (committed) and records the
lab in the instructor's gradebook. :func:`stale_releases` does the same in a throw-away
course and lists what differs from the committed ``labs/`` (``make check`` fails on it).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dlcloud_course.exports import generated_files
from dlcloud_course.labs import REPO, Lab, discover
from dlcloud_course.render import read_lab_notebook, write_notebook

# Where nbgrader's source folder is, relative to a course root (see nbgrader_config.py).
SOURCE_DIR = Path("build") / "source"
RELEASE_DIR = Path("labs")


def render_lab(lab: Lab, source_root: Path) -> Path:
    """Write ``source_root/<lab>/``: the rendered notebook, shipped and generated files."""
    folder = source_root / lab.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_notebook(read_lab_notebook(lab.source), folder / f"{lab.name}.ipynb")
    for relative in lab.shipped_files():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lab.folder / relative, folder / relative)
    for relative, text in generated_files(lab).items():
        path = folder / relative
        if path.exists():
            raise FileExistsError(f"{lab.name}: {relative} is generated, delete it from solutions/{lab.name}/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # \n line endings on every platform
    return folder


def nbgrader_env() -> dict[str, str]:
    # nbgrader runs `alembic` from PATH to set up the gradebook: use this environment's.
    venv_bin = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}


def generate(course_root: Path, labs: list[Lab], record_in_gradebook: bool = True) -> None:
    """Render ``labs`` into ``course_root``'s source folder and generate their releases."""
    for lab in labs:
        render_lab(lab, course_root / SOURCE_DIR)
        print(f"generating {RELEASE_DIR / lab.name}", flush=True)
        command = [str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", lab.name,
                   "--force", "--log-level=WARN"]
        if not record_in_gradebook:
            command.append("--no-db")
        subprocess.run(command, cwd=course_root, env=nbgrader_env(), check=True)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def stale_releases(labs: list[Lab], repo: Path = REPO) -> list[str]:
    """Files of ``labs/`` that differ from, or are missing in, a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="dlcloud-labs-") as tmp:
        course = Path(tmp)
        shutil.copy(repo / "nbgrader_config.py", course / "nbgrader_config.py")
        generate(course, labs, record_in_gradebook=False)
        problems = []
        for lab in labs:
            fresh, committed = course / RELEASE_DIR / lab.name, repo / RELEASE_DIR / lab.name
            fresh_files, committed_files = _tree(fresh), _tree(committed)
            problems += [f"labs/{lab.name}/{n} is missing" for n in sorted(fresh_files - committed_files)]
            problems += [f"labs/{lab.name}/{n} is not generated" for n in sorted(committed_files - fresh_files)]
            problems += [
                f"labs/{lab.name}/{n} is out of date"
                for n in sorted(fresh_files & committed_files)
                if not filecmp.cmp(fresh / n, committed / n, shallow=False)
            ]
        return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dlcloud_course labs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare labs/ with a fresh generation")
    parser.add_argument("labs", nargs="*", help="only these labs (default: all)")
    args = parser.parse_args(argv)
    labs = [lab for lab in discover() if not args.labs or lab.name in args.labs]
    unknown = set(args.labs) - {lab.name for lab in labs}
    if unknown:
        parser.error(f"no such lab in solutions/: {sorted(unknown)}")
    if args.check:
        problems = stale_releases(labs)
        for problem in problems:
            print(f"{problem}: run `make labs` and commit", file=sys.stderr)
        return 1 if problems else 0
    generate(REPO, labs)
    return 0
