"""The lab text format: cell roles become nbgrader metadata, and back, without loss."""

from __future__ import annotations

import pytest

from dlcloud_course.render import SourceError, notebook_text, render_notebook

LAB_TEXT = '''# %% [markdown] given="lab-goal"
# # Lab 9: Example
#
# Why this lab exists.

# %% given="setup"
import math


# %% solution="area"
def area(r):
    ### BEGIN SOLUTION
    return math.pi * r * r
    ### END SOLUTION


# %% tests="area-is-right" points=2
assert abs(area(1) - math.pi) < 1e-9, "area(1) must be pi: see section 1"
### BEGIN HIDDEN TESTS
assert area(0) == 0, "area(0) must be 0"
### END HIDDEN TESTS

# %% [markdown] answer="why-pi" points=3
# Pi is the ratio of a circle's circumference to its diameter.
'''


def test_roles_become_nbgrader_metadata():
    notebook = render_notebook(LAB_TEXT)
    meta = {cell.id: cell.metadata["nbgrader"] for cell in notebook.cells}
    assert [cell.cell_type for cell in notebook.cells] == ["markdown", "code", "code", "code", "markdown"]
    assert meta["lab-goal"] == {"grade": False, "grade_id": "lab-goal", "locked": True,
                                "schema_version": 3, "solution": False, "task": False}
    assert meta["area"]["solution"] and not meta["area"]["locked"] and not meta["area"]["grade"]
    assert meta["area-is-right"]["grade"] and meta["area-is-right"]["locked"] and meta["area-is-right"]["points"] == 2
    assert meta["why-pi"]["grade"] and meta["why-pi"]["solution"] and meta["why-pi"]["points"] == 3
    assert notebook.cells[0].source == "# Lab 9: Example\n\nWhy this lab exists."
    assert notebook.nbformat == 4 and notebook.nbformat_minor == 5


def test_text_notebook_text_is_the_identity():
    assert notebook_text(render_notebook(LAB_TEXT)) == LAB_TEXT


def test_notebook_text_notebook_keeps_every_cell():
    notebook = render_notebook(LAB_TEXT)
    again = render_notebook(notebook_text(notebook))
    assert [(c.cell_type, c.source, c.metadata) for c in again.cells] == [
        (c.cell_type, c.source, c.metadata) for c in notebook.cells
    ]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("# %%", "exactly one of"),
        ('# %% given="a" solution="b"', "exactly one of"),
        ('# %% tests="a-test"', "points="),
        ('# %% given="a" points=2', "points="),
        ('# %% given="a" tags=["x"]', "unknown header keys"),
        ("# %% given=3", "kebab-case"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(header, problem):
    with pytest.raises(SourceError, match=problem):
        render_notebook(f"{header}\nx = 1\n", where="lab9-example.py")


def test_a_grade_id_is_used_once():
    with pytest.raises(SourceError, match="used twice"):
        render_notebook('# %% given="a"\nx = 1\n\n# %% given="a"\ny = 2\n')
