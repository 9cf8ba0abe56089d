"""Helpers for the tests that read the labs and run them through nbgrader's real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat

from dlcloud_course.feedback import hidden_test_lines as hidden_lines_of_cell
from dlcloud_course.generate import SOURCE_DIR, render_lab
from dlcloud_course.labs import REPO, SOLUTIONS, Lab, discover, find
from dlcloud_course.render import read_lab_notebook

LABS = REPO / "labs"
BIN = Path(sys.executable).parent
GRADE_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
NBGRADER_DEFAULT_ID = re.compile(r"^cell-[0-9a-f]{8,}$")
MEANINGFUL_LINE_LENGTH = 12
SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def lab_names() -> list[str]:
    """Every lab in solutions/, so that a new lab is covered without touching the tests."""
    return [lab.name for lab in discover()]


def source_notebook(lab: str) -> nbformat.NotebookNode:
    """The instructor's notebook of a lab, rendered from its text source."""
    return read_lab_notebook(find(lab).source)


def released_notebooks(lab: str) -> list[nbformat.NotebookNode]:
    return [nbformat.read(path, as_version=4) for path in sorted((LABS / lab).glob("*.ipynb"))]


def nbgrader_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if "nbgrader" in c.get("metadata", {})]


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def lab_needs(lab: str) -> set[str]:
    """What a lab needs beyond Python (``{"docker"}``), from its manifest."""
    return set(find(lab).needs)


def make_course(tmp: Path, labs: list[str]) -> Path:
    """A throw-away course directory with the repository's nbgrader config and these labs,
    rendered into its nbgrader source folder as `make labs` does."""
    course = tmp / "course"
    course.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for lab in labs:
        render_lab(find(lab), course / SOURCE_DIR)
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


def _lines_only_in(regions: list[str], sources: list[str]) -> list[str]:
    """Lines of ``regions`` that appear nowhere else in ``sources``, long enough to mean something.

    Lines that also appear outside the regions (``else:``, ``)``, a shared assertion) say
    nothing about what the regions hide, so they are left out.
    """
    all_lines = Counter(line.strip() for source in sources for line in source.splitlines())
    hidden = Counter(line.strip() for region in regions for line in region.splitlines())
    visible = all_lines - hidden
    return sorted(
        line
        for line in hidden
        # Very short lines ("pass", "])") would match ordinary words of any page.
        if len(line) >= MEANINGFUL_LINE_LENGTH and not line.startswith("#") and line not in visible
    )


def hidden_test_lines(lab: str) -> list[str]:
    """Lines that only hidden tests contain: what must never reach a student."""
    sources = [source_of(c) for c in source_notebook(lab).cells]
    return _lines_only_in(["\n".join(hidden_lines_of_cell(s)) for s in sources], sources)


def solution_lines(lab: str) -> list[str]:
    """Lines that only the solution regions contain: the answers."""
    sources = [source_of(c) for c in source_notebook(lab).cells]
    regions = [region for s in sources for region in SOLUTION_REGION.findall(s)]
    return _lines_only_in(regions, sources)


PATCH_KEYS = {"mistake", "cell", "replace", "with", "fails", "message"}


def load_patch(path: Path, reference_sources: dict[str, str]) -> dict:
    """A wrong solution in the course's form (``tests/wrong_solutions/<lab>/*.toml``), applied.

    The file names the ``mistake``, the solution ``cell`` it patches, the text it
    ``replace``s (exactly once in that cell) ``with`` what, the test cells that must then
    ``fail`` and the ``message`` their error must contain. Returns those fields with
    ``name`` (the file's stem) and ``source``, the whole wrong cell.
    """
    import tomllib

    patch = tomllib.loads(path.read_text(encoding="utf-8"))
    assert PATCH_KEYS <= set(patch) <= PATCH_KEYS | {"may_also_fail"}, path.name
    assert patch["cell"] in reference_sources, f"{path.name}: no cell {patch['cell']!r} in the lab"
    reference = reference_sources[patch["cell"]]
    count = reference.count(patch["replace"])
    assert count == 1, f"{path.name}: its `replace` text occurs {count} times in {patch['cell']!r}: update the patch"
    assert patch["replace"] != patch["with"] and patch["fails"], path.name
    return {**patch, "name": path.stem, "source": reference.replace(patch["replace"], patch["with"])}


def honest_submission(release: dict, solutions: dict) -> dict:
    """The release notebook (JSON) with every solution cell's source taken from the
    solution notebook: what an honest student who solved everything would submit."""
    def grade_id(cell: dict) -> str | None:
        return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")

    answers = {grade_id(c): c["source"] for c in solutions["cells"]
               if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    notebook = json.loads(json.dumps(release))
    for cell in notebook["cells"]:
        if grade_id(cell) in answers:
            cell["source"] = answers[grade_id(cell)]
    return notebook


def cell_role(cell) -> tuple[str | None, str | None]:
    """("tests" | "solution" | None, grade_id) of a rendered cell, from its nbgrader metadata."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("grade") and not meta.get("solution"):
        return "tests", meta.get("grade_id")
    if meta.get("solution"):
        return "solution", meta.get("grade_id")
    return None, meta.get("grade_id")


def patched_notebook(notebook: nbformat.NotebookNode, mistake: dict) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with a wrong solution's patch (``cell``, ``replace``, ``with``) applied."""
    import copy

    patched = copy.deepcopy(notebook)
    cells = [c for c in patched.cells if cell_role(c) == ("solution", mistake["cell"])]
    assert len(cells) == 1, f"no solution cell {mistake['cell']!r}"
    count = cells[0].source.count(mistake["replace"])
    assert count == 1, f"the patch's `replace` text occurs {count} times in {mistake['cell']!r}: update the patch"
    cells[0].source = cells[0].source.replace(mistake["replace"], mistake["with"])
    return patched


def failing_test_cells(notebook: nbformat.NotebookNode, workdir: Path, cell_timeout_s: int) -> dict[str, str]:
    """Run ``notebook`` as nbgrader's autograder does (every cell, errors allowed) in ``workdir``;
    grade_id -> error text of every test cell that fails (raises or writes to stderr)."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    failures = {}
    for cell in notebook.cells:
        role, grade_id = cell_role(cell)
        if role != "tests":
            continue
        outputs = cell.get("outputs", [])
        errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.output_type == "error"]
        stderr = [o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr"]
        if errors or stderr:
            failures[grade_id] = "\n".join(errors + stderr)
    return failures


# The copy leaves itself out: a later save point's copy would otherwise hold the earlier
# copy, and restoring from it would put the earlier (stale) copy back.
SAVE_NAMESPACE = "_reference_namespace = {k: v for k, v in globals().items() if k != '_reference_namespace'}"
# The saved copy itself stays: several mistakes of one cell restore from it in turn.
RESTORE_NAMESPACE = """\
for _name in [name for name in globals() if name not in _reference_namespace
              and name != "_reference_namespace"]:
    del globals()[_name]
globals().update(_reference_namespace)"""


def _helper_cell(source: str, cell_id: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.id = cell_id
    return cell


def combined_notebook(reference: nbformat.NotebookNode, mistakes: list[dict],
                      not_rerun: set[str] = frozenset(), restore: str = RESTORE_NAMESPACE,
                      save: str = SAVE_NAMESPACE, until_expected: bool = False
                      ) -> nbformat.NotebookNode:
    """The reference's cells, with each mistake's run inserted before the cell it patches.

    Running a whole lab once per mistake repeats its prefix each time; here the mistakes
    share it. Just before a patched cell, the kernel's namespace is saved; each mistake
    then runs its wrong cell and every code cell after it (but ``not_rerun``: a cleanup
    that may run once), its test cells' grade_ids reading ``<mistake>/<grade_id>``; then
    ``restore`` puts the namespace back (plus whatever global state the lab must reset),
    and the reference goes on; ``save`` may note more than the namespace first (names it
    assigns before :data:`SAVE_NAMESPACE` are saved with the rest). With ``until_expected``
    a mistake's run stops after the last test cell it must fail (its ``fails`` and
    ``may_also_fail``): the test cells in between must still pass, the ones after it do not
    run, as in labs 5, 7 and 8 (CI's time). :func:`mistake_outcomes` splits the failures again.
    """
    combined = nbformat.from_dict(reference)
    combined.cells = []
    for index, cell in enumerate(reference.cells):
        role, grade_id = cell_role(cell)
        patching = [m for m in mistakes if role == "solution" and m["cell"] == grade_id]
        if patching:
            combined.cells.append(_helper_cell(save, f"save-{index}"))
        for number, mistake in enumerate(patching):
            wrong = patched_notebook(reference, mistake)
            tail_cells = wrong.cells[index:]
            if until_expected:
                named = {*mistake["fails"], *mistake.get("may_also_fail", [])}
                last = max(i for i, c in enumerate(tail_cells)
                           if cell_role(c)[0] == "tests" and cell_role(c)[1] in named)
                tail_cells = tail_cells[:last + 1]
            for later, tail in enumerate(tail_cells):
                if tail.cell_type != "code" or cell_role(tail)[1] in not_rerun:
                    continue
                tail = nbformat.from_dict(tail)
                tail.id = f"wrong-{index}-{number}-{later}"
                if cell_role(tail)[0] == "tests":
                    tail.metadata.nbgrader.grade_id = f"{mistake['name']}/{cell_role(tail)[1]}"
                combined.cells.append(tail)
            combined.cells.append(_helper_cell(restore, f"restore-{index}-{number}"))
        combined.cells.append(cell)
    return combined


def mistake_outcomes(failures: dict[str, str], mistakes: list[dict]) -> dict[str, dict[str, str]]:
    """``{"reference": {test: error}, mistake name: {test: error}}`` from a combined run."""
    results: dict[str, dict[str, str]] = {"reference": {}, **{m["name"]: {} for m in mistakes}}
    for grade_id, error in failures.items():
        name, _, test = grade_id.rpartition("/")
        results[name or "reference"][test] = error
    return results


def assert_mistake_caught(mistake: dict, failures: dict[str, str]) -> None:
    """Exactly the test cells the mistake names fail (``may_also_fail`` may), each with an
    error whose text matches its ``message``: the mistake costs its points and no others."""
    import re

    expected, also = set(mistake["fails"]), set(mistake.get("may_also_fail", []))
    assert expected <= set(failures) <= expected | also, (
        f"{mistake['name']} ({mistake['mistake']}): expected exactly {sorted(expected)} to fail"
        f"{f' (and perhaps {sorted(also)})' if also else ''}, got {sorted(failures)}; messages: {failures}")
    for grade_id in expected:
        assert re.search(mistake["message"], failures[grade_id]), (
            f"{mistake['name']}: {grade_id} fails, but its message does not name the problem "
            f"(/{mistake['message']}/): {failures[grade_id][:500]}")


__all__ = ["Lab", "REPO", "SOLUTIONS", "LABS", "discover", "find"]
