"""Run lab 7's cells in this process, as the notebook's kernel would, for the lab 7 tests.

A Jupyter kernel runs every cell in one namespace and one asyncio event loop, and lets a
cell `await` at top level. `LabSession` does the same: the cells come from the lab's own
source (rendered as `make labs` does), are compiled with top-level await allowed and run
in order on one event loop that outlives each cell, so the servers a cell starts keep
serving for the cells after it. Swapping a cell for another source runs a wrong solution.
The cells run in the lab rendered as `make labs` renders it, so the files it ships (the
.proto) and the ones generated for it (lab 1's insurance_service.py) lie next to them.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import shutil
import tempfile
from pathlib import Path

from labtools import source_notebook

from dlcloud_course.generate import render_lab
from dlcloud_course.labs import find

LAB = "lab7-grpc-serving"
TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def lab_cells() -> list[tuple[str, str, dict]]:
    """(grade_id, source, nbgrader metadata) of every code cell, in notebook order."""
    return [(cell.id, cell.source, cell.metadata.get("nbgrader", {}))
            for cell in source_notebook(LAB).cells if cell.cell_type == "code"]


def is_test_cell(metadata: dict) -> bool:
    return bool(metadata.get("grade")) and not metadata.get("solution")


class LabSession:
    """One kernel's worth of lab 7: a namespace and the event loop its servers live in."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.namespace: dict = {"__name__": "__main__"}
        self.cells = lab_cells()
        self._rendered = Path(tempfile.mkdtemp(prefix="lab7-session-"))
        self.lab_dir = render_lab(find(LAB), self._rendered)

    def run_source(self, source: str, name: str, namespace: dict | None = None) -> None:
        code = compile(source, f"{LAB}:{name}", "exec", flags=TOP_LEVEL_AWAIT)
        namespace = self.namespace if namespace is None else namespace
        with _working_directory(self.lab_dir):  # the lab reads its files from the current folder
            result = eval(code, namespace)  # noqa: S307 - the lab's own cells, as a kernel runs them
            if inspect.iscoroutine(result):
                self.loop.run_until_complete(result)

    def index_of(self, grade_id: str) -> int:
        return next(i for i, (cell_id, _, _) in enumerate(self.cells) if cell_id == grade_id)

    def run_until(self, grade_id: str, namespace: dict | None = None, start: int = 0,
                  replace: dict[str, str] | None = None) -> None:
        """Run the non-test cells from `start` up to, not including, `grade_id`."""
        replace = replace or {}
        for cell_id, source, metadata in self.cells[start:self.index_of(grade_id)]:
            if not is_test_cell(metadata):
                self.run_source(replace.get(cell_id, source), cell_id, namespace)

    def run_cell(self, grade_id: str, namespace: dict | None = None) -> None:
        self.run_source(self.cells[self.index_of(grade_id)][1], grade_id, namespace)

    def close(self) -> None:
        """Stop every server the cells started (the lab's own cleanup), then the loop."""
        with contextlib.suppress(Exception):
            self.run_cell("cleanup")
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        shutil.rmtree(self._rendered, ignore_errors=True)


@contextlib.contextmanager
def _working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
