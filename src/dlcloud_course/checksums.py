"""Autograde without a false "checksum has changed" warning for every hidden-test cell.

Why nbgrader warns (0.9.6, also jupyter/nbgrader#1961): ``generate_assignment`` runs
``ComputeChecksums`` and ``SaveCells`` *before* ``ClearHiddenTests``, so the gradebook
keeps each test cell's full source and its checksum, hidden tests included, while the
released notebook carries the cell without them and a checksum recomputed after
clearing. At autograde, ``OverwriteCells`` compares the submitted cell with the
gradebook's checksum: every cell with hidden tests differs, although the student
changed nothing, and nbgrader warns, then puts the gradebook's source back. A lab with
14 such cells prints 14 warnings per submission, and a real edit of a locked cell is lost
among them.

:class:`OverwriteLockedCells` puts the hidden tests back first when the submitted cell is
exactly the released one (the gradebook's source with its hidden regions removed, as
``ClearHiddenTests`` removes them). Only a locked cell that differs from its release is
reported, in words that say what happened. Grading is unchanged: either way the cell is
graded with the gradebook's source. ``nbgrader_config.py`` installs it in place of
``OverwriteCells`` in ``Autograde.sanitize_preprocessors``.
"""

from __future__ import annotations

import nbformat
from nbgrader.api import MissingEntry
from nbgrader.converters import Autograde
from nbgrader.preprocessors import ClearHiddenTests, OverwriteCells

EDITED_LOCKED_CELL = "The submission changed locked cell '{name}': it is graded with the original"


class OverwriteLockedCells(OverwriteCells):
    """``OverwriteCells`` that knows a released cell lacks its hidden tests."""

    def _released_source(self, source: str) -> str:
        cell = nbformat.v4.new_code_cell(source)
        ClearHiddenTests(parent=self)._remove_hidden_test_region(cell)
        return cell.source

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            try:
                original = self.gradebook.find_source_cell(
                    grade_id, self.notebook_id, self.assignment_id
                )
            except MissingEntry:
                original = None  # OverwriteCells reports it
            if (
                original is not None
                and original.locked
                and cell.source != original.source
                and cell.source == self._released_source(original.source)
            ):
                self.log.debug("Restored the hidden tests of cell %s", grade_id)
                cell.source = original.source
        return super().preprocess_cell(cell, resources, cell_index)

    def report_change(self, name, attr, old, new):
        if attr == "checksum":
            self.log.warning(
                EDITED_LOCKED_CELL.format(name=name) + " (checksum %s, got %s)", old, new
            )
        else:
            super().report_change(name, attr, old, new)


def sanitize_preprocessors() -> list[type]:
    """nbgrader's own list for ``Autograde.sanitize_preprocessors``, with ours in its place."""
    defaults = Autograde.class_traits()["sanitize_preprocessors"].default()
    return [OverwriteLockedCells if p is OverwriteCells else p for p in defaults]
