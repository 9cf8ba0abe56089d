"""Feedback that keeps hidden tests hidden: nbgrader's ``generate_feedback`` preprocessor.

nbgrader 0.9 restores each test cell's full source, hidden tests included, when it
autogrades, and ``generate_feedback`` renders that notebook as it is: students would
read the hidden tests and their tracebacks. :class:`HideHiddenTests` runs during
``generate_feedback`` (see ``nbgrader_config.py``): it removes the hidden regions
from the source and replaces a failing hidden test's traceback with its message.
"""

from __future__ import annotations

import nbformat
from nbgrader.preprocessors import ClearHiddenTests

HIDDEN_TESTS_BEGIN = "### BEGIN HIDDEN TESTS"


def hidden_test_lines(source: str) -> list[str]:
    """The lines between the hidden-test delimiters of one cell's source."""
    lines, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == HIDDEN_TESTS_BEGIN:
            inside = True
        elif stripped == "### END HIDDEN TESTS":
            inside = False
        elif inside:
            lines.append(line)
    return lines


def _summarize_error(output):
    # Keep what went wrong (the assertion's message), drop where: the traceback
    # would quote the hidden test's code.
    message = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": ")
    return nbformat.v4.new_output(
        "stream", name="stderr", text=f"A hidden test in this cell failed.\n{message}\n"
    )


class HideHiddenTests(ClearHiddenTests):
    """Remove hidden tests and their tracebacks from the notebook students get back."""

    def preprocess_cell(self, cell, resources, cell_index):
        had_hidden_tests = HIDDEN_TESTS_BEGIN in cell.get("source", "")
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        if had_hidden_tests and cell.cell_type == "code":
            cell.outputs = [
                _summarize_error(output)
                for output in cell.outputs
                if output.get("output_type") == "error"
            ]
        return cell, resources
