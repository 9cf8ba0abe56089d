"""A lab's text source and the nbgrader notebook made from it, both ways.

A lab is authored once as a jupytext *percent* script, ``solutions/labN-slug/labN-slug.py``
(chosen over MyST Markdown because code cells stay plain Python that ruff, grep and
``duplicates`` read, and a diff of a lab is a diff of code). Each cell's header carries
exactly one *role* whose value is the cell's nbgrader grade_id::

    # %% [markdown] given="lab-goal"          text students read
    # %% given="setup"                          code students read and run
    # %% solution="state-machine-transition"    code students write (### BEGIN/END SOLUTION)
    # %% tests="illegal-steps-refused" points=2 an autograded test (hidden tests inside)
    # %% [markdown] answer="reading-results" points=3   a written answer graded by hand
    # %% [markdown] task="design-choice" points=2      a task graded by hand

:func:`render_notebook` turns that text into the notebook nbgrader reads (full nbgrader
metadata, cell id = grade_id, nbformat 4.5); :func:`notebook_text` is its inverse, so
the round trip text -> notebook -> text is the identity (tests/test_render.py).
"""

from __future__ import annotations

import nbformat
from nbformat import NotebookNode

# role -> nbgrader metadata (besides grade_id, points and schema_version)
ROLES = {
    "given": {"grade": False, "locked": True, "solution": False, "task": False},
    "solution": {"grade": False, "locked": False, "solution": True, "task": False},
    "tests": {"grade": True, "locked": True, "solution": False, "task": False},
    "answer": {"grade": True, "locked": False, "solution": True, "task": False},
    "task": {"grade": False, "locked": True, "solution": False, "task": True},
}
GRADED_ROLES = {"tests", "answer", "task"}
NBGRADER_SCHEMA = 3
JUPYTEXT_FORMAT = {"extension": ".py", "format_name": "percent", "comment_magics": False}
# What the text keeps of the notebook: no header, only the role and points of each cell.
JUPYTEXT_FILTERS = {"notebook_metadata_filter": "-all", "cell_metadata_filter": "-all"}
# Keys jupytext itself adds to remember unusual spacing: not part of a lab (the round-trip
# test asks authors to keep jupytext's spacing instead).
JUPYTEXT_SPACING_KEYS = {"lines_to_next_cell", "lines_to_end_of_cell_marker"}
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "version": "3.11"},
}


class SourceError(ValueError):
    """A lab's text source breaks the cell convention."""


def _role_of(metadata: dict, where: str) -> tuple[str, str]:
    roles = [key for key in ROLES if key in metadata]
    if len(roles) != 1:
        raise SourceError(f"{where}: a cell header needs exactly one of {sorted(ROLES)}, found {roles or 'none'}")
    role = roles[0]
    grade_id = metadata[role]
    if not isinstance(grade_id, str) or not grade_id:
        raise SourceError(f'{where}: write {role}="kebab-case-id"')
    extra = set(metadata) - {role, "points"}
    if extra:
        raise SourceError(f"{where} ({grade_id}): unknown header keys {sorted(extra)}")
    if (role in GRADED_ROLES) != ("points" in metadata):
        raise SourceError(f"{where} ({grade_id}): points= goes with {sorted(GRADED_ROLES)} cells, and only those")
    return role, grade_id


def nbgrader_metadata(role: str, grade_id: str, points: float | None) -> dict:
    meta = {**ROLES[role], "grade_id": grade_id, "schema_version": NBGRADER_SCHEMA}
    if points is not None:
        meta["points"] = points
    return dict(sorted(meta.items()))


def role_of_cell(cell: NotebookNode) -> tuple[str, str, float | None]:
    """(role, grade_id, points) of a notebook cell from its nbgrader metadata."""
    meta = cell.metadata.get("nbgrader")
    if not meta:
        raise SourceError(f"cell {cell.get('id', '?')} has no nbgrader metadata")
    flags = {key: bool(meta.get(key)) for key in ("grade", "locked", "solution", "task")}
    for role, expected in ROLES.items():
        if flags == expected or (role == "answer" and flags == {**expected, "locked": True}):
            return role, meta["grade_id"], meta.get("points")
    raise SourceError(f"cell {meta.get('grade_id')}: nbgrader flags {flags} match no role")


def render_notebook(text: str, where: str = "lab source") -> NotebookNode:
    """The nbgrader notebook of a lab's text source."""
    import jupytext

    parsed = jupytext.reads(text, fmt=JUPYTEXT_FORMAT)
    notebook = nbformat.v4.new_notebook(metadata=NOTEBOOK_METADATA)
    seen: set[str] = set()
    for index, cell in enumerate(parsed.cells, start=1):
        header = {k: v for k, v in cell.metadata.items() if k not in JUPYTEXT_SPACING_KEYS}
        role, grade_id = _role_of(header, f"{where}, cell {index}")
        if grade_id in seen:
            raise SourceError(f"{where}: grade_id {grade_id!r} is used twice")
        seen.add(grade_id)
        meta = {"nbgrader": nbgrader_metadata(role, grade_id, cell.metadata.get("points"))}
        if cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source, metadata=meta, id=grade_id)
        elif cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source, metadata=meta, id=grade_id)
        else:
            raise SourceError(f"{where} ({grade_id}): {cell.cell_type} cells are not used in labs")
        notebook.cells.append(new)
    nbformat.validate(notebook)
    return notebook


def notebook_text(notebook: NotebookNode) -> str:
    """The text source of an nbgrader notebook (the inverse of :func:`render_notebook`)."""
    import jupytext

    text_notebook = nbformat.v4.new_notebook(metadata={"jupytext": dict(JUPYTEXT_FILTERS)})
    for cell in notebook.cells:
        role, grade_id, points = role_of_cell(cell)
        header = {role: grade_id, **({} if points is None else {"points": points})}
        text_notebook.metadata["jupytext"]["cell_metadata_filter"] = "-all"
        maker = nbformat.v4.new_markdown_cell if cell.cell_type == "markdown" else nbformat.v4.new_code_cell
        text_notebook.cells.append(maker(cell.source, metadata=header))
    # Keep the header keys: jupytext writes only the cell metadata its filter lets through.
    keys = sorted({key for cell in text_notebook.cells for key in cell.metadata})
    text_notebook.metadata["jupytext"]["cell_metadata_filter"] = ",".join([*keys, "-all"])
    return jupytext.writes(text_notebook, fmt=JUPYTEXT_FORMAT)


def read_lab_notebook(path) -> NotebookNode:
    """The nbgrader notebook of a lab source file (``.py``) or of a rendered ``.ipynb``."""
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    return render_notebook(path.read_text(encoding="utf-8"), where=str(path))


def write_notebook(notebook: NotebookNode, path) -> None:
    """Write a notebook the way the course commits them: stable bytes, no outputs."""
    from pathlib import Path

    Path(path).write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
