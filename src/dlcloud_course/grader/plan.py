"""What runs in the sandbox: the instructor's cells, and only the solution cells of the student.

A submission is read as JSON and never executed here. Which cell is locked, a test or
a solution comes from the instructor's source notebook, matched by ``grade_id``: the
submission's metadata is not trusted (a student can turn a test into a "solution").
Locked and test cells are always the instructor's (tests with their hidden part), so a
submission that edits or deletes them is graded as if it had not, and is flagged.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
#: A submission larger than this is not parsed (a flag, and zero).
MAX_SUBMISSION_BYTES = 8 * 1024 * 1024
#: Names in a student's cells that an honest lab 1 never needs: reported, not scored.
SUSPICIOUS_NAMES = {
    "get_ipython", "excepthook", "displayhook", "__builtins__", "builtins", "gc", "ctypes",
    "_getframe", "settrace", "setprofile", "f_back", "f_locals", "tb_frame", "subprocess",
    "addaudithook", "input_transformers_cleanup", "ast_transformers", "showtraceback",
    "run_cell", "AssertionError", "os.fork", "__code__", "f_globals",
}
#: Parts of the course's own paths: a student's code has no reason to name them.
COURSE_PATH_WORDS = ("gradebook", "solutions/", "submitted/", ".nbgrader", "nbgrader_config",
                     "autograded/")


@dataclass(frozen=True)
class InstructorCell:
    kind: str  # "locked", "solution" or "test"
    grade_id: str
    source: str  # the instructor's: solution included, hidden tests included
    released: str  # what students received (stubbed solution, no hidden tests)
    points: float = 0.0


@dataclass
class Plan:
    cells: list[dict]  # {"kind": "locked"|"student"|"test", "id": ..., "source": ...}
    flags: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def read_notebook(path: Path) -> dict:
    """A notebook as JSON, from ``.ipynb`` or from its jupytext text source (``.py``)."""
    if path.suffix == ".py":
        import jupytext

        return json.loads(jupytext.writes(jupytext.read(path), fmt="ipynb"))
    return json.loads(path.read_text())


def _kind(meta: dict) -> str | None:
    if meta.get("grade") and not meta.get("solution"):
        return "test"
    if meta.get("solution"):
        return "solution"
    if meta.get("locked"):
        return "locked"
    return None


def instructor_cells(source_nb: dict, release_nb: dict) -> list[InstructorCell]:
    """The code cells of the lab, in the instructor's order, with their released text."""
    released = {
        c["metadata"]["nbgrader"].get("grade_id"): cell_source(c)
        for c in release_nb["cells"] if "nbgrader" in c.get("metadata", {})
    }
    cells = []
    for cell in source_nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if cell.get("cell_type") != "code" or not meta or _kind(meta) is None:
            continue
        grade_id = meta["grade_id"]
        cells.append(InstructorCell(
            kind=_kind(meta), grade_id=grade_id, source=cell_source(cell),
            released=released.get(grade_id, ""), points=float(meta.get("points", 0) or 0),
        ))
    return cells


def _same_text(a: str, b: str) -> bool:
    def normal(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return normal(a) == normal(b)


def suspicious_names(source: str) -> set[str]:
    """Names and attributes of :data:`SUSPICIOUS_NAMES` that a student's cell uses."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in SUSPICIOUS_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in SUSPICIOUS_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.alias) and node.name.split(".")[0] in SUSPICIOUS_NAMES:
            found.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(f"the path word {word!r}" for word in COURSE_PATH_WORDS
                         if word in node.value)
    return found


def _submission_cells(submission: dict) -> tuple[dict[str, str], dict[str, list[str]], list]:
    """Sources by grade_id (first occurrence), extra cells after each known id, duplicates."""
    by_id: dict[str, str] = {}
    extra_after: dict[str, list[str]] = {}
    duplicates = []
    previous = ""
    for cell in submission.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader") if isinstance(cell.get("metadata"), dict) else None
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if isinstance(grade_id, str) and grade_id not in by_id:
            by_id[grade_id] = cell_source(cell)
            previous = grade_id
        else:
            if isinstance(grade_id, str):
                duplicates.append(grade_id)
            extra_after.setdefault(previous, []).append(cell_source(cell))
    return by_id, extra_after, duplicates


def build_plan(cells: list[InstructorCell], submission: dict) -> Plan:
    """The cells to run, in the instructor's order, and the flags of what was changed."""
    by_id, extra_after, duplicates = _submission_cells(submission)
    plan = Plan(cells=[])
    for grade_id in duplicates:
        plan.flags.append(("duplicated-cell", f"cell {grade_id} appears more than once"))

    def add_student(cell_id: str, source: str, reference: str = "") -> None:
        # What the instructor's own solution of this cell uses is what the task asks for
        # (lab 2's wheelhouse runs pip with subprocess): not suspicious there.
        names = suspicious_names(source) - (suspicious_names(reference) if reference else set())
        if names:
            plan.flags.append(("suspicious-code", f"{cell_id} uses {', '.join(sorted(names))}"))
        plan.cells.append({"kind": "student", "id": cell_id, "source": source})

    for number, source in enumerate(extra_after.get("", [])):
        add_student(f"added-{number}-at-start", source)
    for cell in cells:
        submitted = by_id.get(cell.grade_id)
        if cell.kind == "solution":
            if submitted is None:
                plan.flags.append(("deleted-cell", f"solution cell {cell.grade_id} is missing"))
            add_student(cell.grade_id, submitted if submitted is not None else cell.released,
                        cell.source)
        else:
            if submitted is None:
                plan.flags.append(("deleted-cell", f"{cell.kind} cell {cell.grade_id} was deleted"))
            elif not _same_text(submitted, cell.released):
                plan.flags.append(("edited-cell", f"{cell.kind} cell {cell.grade_id} was edited"))
            plan.cells.append({"kind": cell.kind, "id": cell.grade_id, "source": cell.source})
        for number, source in enumerate(extra_after.get(cell.grade_id, [])):
            add_student(f"added-{number}-after-{cell.grade_id}", source)
    return plan


def load_submission(path: Path) -> tuple[dict | None, str | None]:
    """The submission as JSON, or None and why it cannot be graded."""
    try:
        size = path.stat().st_size
    except OSError as error:
        return None, f"cannot read {path.name}: {error.strerror}"
    if size > MAX_SUBMISSION_BYTES:
        return None, f"{path.name} is {size} bytes, more than {MAX_SUBMISSION_BYTES}"
    try:
        notebook = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        return None, f"{path.name} is not a notebook: {str(error)[:120]}"
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None, f"{path.name} has no list of cells"
    return notebook, None
