"""The course's own layout, shared by tools/, tests/ and benchmarks/ (not by labs).

A lab is a folder of ``solutions/`` holding a notebook. Its notebook metadata may say
what it needs beyond Python: ``{"dlcloud": {"needs": ["docker"]}}``.
"""

from __future__ import annotations

import json
from pathlib import Path


def lab_names(solutions_dir: Path) -> list[str]:
    """Every lab authored in ``solutions_dir``, sorted (lab1-..., lab2-..., ...)."""
    return sorted(p.name for p in solutions_dir.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def lab_notebooks(lab_dir: Path) -> list[Path]:
    return sorted(lab_dir.glob("*.ipynb"))


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def lab_needs(lab_dir: Path) -> set[str]:
    """What a lab needs beyond Python, from its notebooks' ``dlcloud.needs`` metadata."""
    needs: set[str] = set()
    for path in lab_notebooks(lab_dir):
        needs |= set(read_notebook(path).get("metadata", {}).get("dlcloud", {}).get("needs", []))
    return needs
