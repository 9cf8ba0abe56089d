"""Where the labs are and what each one declares in its manifest.

A lab is a folder ``solutions/labN-slug/`` holding its text source ``labN-slug.py``
(see :mod:`dlcloud_course.render`), its manifest ``lab.toml`` and the files it ships to
students. The manifest says what the lab needs beyond Python, its budget, and which of
its shipped files are generated (from another lab's exported cells or from the lock)::

    title = "Lab 2: Containerize the insurance service"
    needs = ["docker"]            # any of "docker", "java", "gpu", "cluster"
    optional = []                 # needed only by cells that say so when it is missing

    [budget]
    memory_mib = 2048
    wall_s = 300

    [[generated]]                 # written by `make labs`, checked by `make check`
    path = "app/insurance_service.py"
    module_from = "lab1-bpaas"    # the cells of lab 1 marked `#@export`
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
RELEASES = REPO / "labs"
LAB_NAME = re.compile(r"^lab(\d+)-[a-z0-9]+(-[a-z0-9]+)*$")
KNOWN_NEEDS = {"docker", "java", "gpu", "cluster"}
MANIFEST = "lab.toml"
# Files of a lab folder that never ship to students: the source and the manifest.
NOT_SHIPPED = {MANIFEST}
IGNORED_PARTS = {"__pycache__", ".ipynb_checkpoints"}


class ManifestError(ValueError):
    """A lab's folder or manifest does not follow the course's convention."""


@dataclass(frozen=True)
class Lab:
    name: str
    folder: Path
    title: str
    needs: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    memory_mib: int = 2048
    wall_s: int = 300
    generated: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def number(self) -> int:
        return lab_number(self.name)

    @property
    def source(self) -> Path:
        """The lab's one text source, ``labN-slug.py``."""
        return self.folder / f"{self.name}.py"

    def shipped_files(self) -> list[Path]:
        """Files of the folder that go to students as they are (relative paths), sorted."""
        files = []
        for path in sorted(self.folder.rglob("*")):
            relative = path.relative_to(self.folder)
            if path.is_dir() or IGNORED_PARTS & set(relative.parts) or path.suffix == ".pyc":
                continue
            if path == self.source or str(relative) in NOT_SHIPPED:
                continue
            files.append(relative)
        return files


def lab_number(name: str) -> int:
    match = LAB_NAME.match(name)
    if not match:
        raise ManifestError(f"{name!r} is not a lab folder name of the form labN-slug")
    return int(match.group(1))


def read_lab(folder: Path) -> Lab:
    """The lab in ``folder``, its manifest checked."""
    name = folder.name
    lab_number(name)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise ManifestError(f"{folder}: no {MANIFEST} (see CONTRIBUTING.md)")
    if not (folder / f"{name}.py").exists():
        raise ManifestError(f"{folder}: no text source {name}.py")
    manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    needs = frozenset(manifest.get("needs", []))
    optional = frozenset(manifest.get("optional", []))
    unknown = (needs | optional) - KNOWN_NEEDS
    if unknown:
        raise ManifestError(f"{manifest_path}: unknown needs {sorted(unknown)}; known: {sorted(KNOWN_NEEDS)}")
    if "title" not in manifest:
        raise ManifestError(f"{manifest_path}: no title")
    budget = manifest.get("budget", {})
    return Lab(
        name=name,
        folder=folder,
        title=manifest["title"],
        needs=needs,
        optional=optional,
        memory_mib=int(budget.get("memory_mib", 2048)),
        wall_s=int(budget.get("wall_s", 300)),
        generated=tuple(manifest.get("generated", [])),
    )


def discover(solutions: Path = SOLUTIONS) -> list[Lab]:
    """Every lab in ``solutions``, in course order (lab9 before lab10)."""
    folders = [p for p in solutions.iterdir() if p.is_dir() and LAB_NAME.match(p.name)]
    return sorted((read_lab(p) for p in folders), key=lambda lab: lab.number)


def lab_names(solutions: Path = SOLUTIONS) -> list[str]:
    return [lab.name for lab in discover(solutions)]


def find(name: str, solutions: Path = SOLUTIONS) -> Lab:
    return read_lab(solutions / name)
