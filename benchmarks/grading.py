"""Submissions per minute: the secure grader with 1 and 2 workers against serial `nbgrader autograde`.

    python benchmarks/grading.py [--submissions 50] [--workers 1 2] [--skip-nbgrader]

A class of synthetic lab-1 submissions (the honest solution with 0, 1, 2, ... of its
solution cells put back to the release's stub, in turn, so scores and run times vary)
is graded in one throw-away course: first by plain serial `nbgrader autograde`, then by
`dlcloud_course.grader` with each number of workers. The overhead per submission is
the sandbox's wall time minus the time the worker spent executing the cells (container
create, start, stdin, the supervisor and the worker's interpreters, integrity checks,
signing, stop and removal). The load average is printed before and after: on a shared
machine it says more about the figures than the number of cores.
Needs a Docker Engine; builds the local base and the grading image if missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB = "lab1-bpaas"
BIN = Path(sys.executable).parent


def nbgrader(course: Path, *args: str) -> None:
    env = {**os.environ, "DLCLOUD_GRADING_DIR": str(course / ".nbgrader"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def make_course(tmp: Path) -> Path:
    """A throw-away course with lab 1, laid out as the tests' labtools.make_course does."""
    sys.path.insert(0, str(REPO / "tests"))
    from labtools import make_course as make_test_course

    course = make_test_course(tmp, [LAB])
    nbgrader(course, "generate_assignment", LAB, "--force")
    return course


def synthetic_class(course: Path, count: int) -> None:
    """``count`` submissions: the solution with the k-th solution cells stubbed, k in turn."""
    from dlcloud_course.grader.gradebook import Lab
    from dlcloud_course.grader.plan import read_notebook

    release = json.loads((course / "labs" / LAB / f"{LAB}.ipynb").read_text())
    source = read_notebook(Lab(course, LAB, course / ".nbgrader").source_path())

    def grade_id(cell):
        return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")

    answers = {grade_id(c): c["source"] for c in source["cells"]
               if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    order = list(answers)
    for number in range(count):
        stubbed = set(order[: number % (len(order) + 1)])
        notebook = json.loads(json.dumps(release))
        for cell in notebook["cells"]:
            if grade_id(cell) in answers and grade_id(cell) not in stubbed:
                cell["source"] = answers[grade_id(cell)]
        folder = course / ".nbgrader" / "submitted" / f"student-{number:03d}" / LAB
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{LAB}.ipynb").write_text(json.dumps(notebook))


def time_nbgrader(course: Path) -> float:
    started = time.perf_counter()
    nbgrader(course, "autograde", LAB, "--create", "--force")
    return time.perf_counter() - started


def time_secure(course: Path, workers: int, client, image: str) -> tuple[float, list]:
    sys.path.insert(0, str(REPO / "src"))
    from dlcloud_course.grader.gradebook import Lab, grade_lab

    lab = Lab(course, LAB, course / ".nbgrader")
    started = time.perf_counter()
    graded = grade_lab(client, image, lab, workers=workers, labels={"dlcloud.benchmark": "1"})
    return time.perf_counter() - started, graded


def _row(name: str, workers: int, wall: float, overhead, checks, submissions: int) -> None:
    per_minute = submissions / wall * 60
    print(f"{name:<30}{workers:>8}{wall:>10.1f}{per_minute:>10.1f}"
          f"{'' if overhead is None else f'{overhead:.2f}':>12}"
          f"{'' if checks is None else f'{checks:.2f}':>10}", flush=True)


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-nbgrader", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from dlcloud import docker_engine
    from dlcloud_course.grader.image import build_grading_image

    load_before = _load()
    client = docker_engine.connect()
    base = os.environ.get("DLCLOUD_BASE_IMAGE") or docker_engine.build_local_base_image(client=client)
    image = build_grading_image(client, base=base)
    print(f"{args.submissions} synthetic {LAB} submissions, {os.cpu_count()} CPUs, "
          f"load average {load_before} before", flush=True)
    print(f"{'grader':<30}{'workers':>8}{'wall s':>10}{'subm/min':>10}{'overhead s':>12}{'checks s':>10}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        course = make_course(Path(tmp))
        synthetic_class(course, args.submissions)
        # Each row as soon as it is measured: a run cut short still says what it measured.
        if not args.skip_nbgrader:
            _row("nbgrader autograde (serial)", 1, time_nbgrader(course), None, None, args.submissions)
        for workers in args.workers:
            wall, graded = time_secure(course, workers, client, image)
            overheads = [r.sandbox_s - r.notebook_s for r in graded if r.notebook_s]
            checks = [r.checks_s for r in graded if r.notebook_s]
            _row("secure grader", workers, wall,
                 statistics.mean(overheads) if overheads else None,
                 statistics.mean(checks) if checks else None, args.submissions)
    print(f"load average {_load()} after", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
