"""The benchmark scripts stay runnable: each imports and explains itself with --help.

They print tables and assert nothing (budgets are measured, never asserted); running
them whole is `make benchmark`'s job, not the test suite's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from labtools import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_benchmark_script_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, f"{script.name} --help failed:\n{result.stderr[-2000:]}"
    assert "usage" in result.stdout.lower()
