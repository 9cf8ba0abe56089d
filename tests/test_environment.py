"""One pinned environment: the lock pins everything, the rest is derived from it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest
from labtools import REPO

from dlcloud_course import environment
from dlcloud_course.environment import locked_pins, stale_files

LOCK_TEXT = (REPO / "requirements.lock").read_text()
PINS = dict(pin.split("==") for pin in locked_pins(LOCK_TEXT))


def test_derived_files_agree_with_the_lock():
    stale = stale_files(LOCK_TEXT)
    assert not stale, f"{stale} disagree with requirements.lock: run `make env`"


def test_check_mode_reports_a_disagreement(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "REPO", tmp_path)
    assert stale_files("pandas==1.0.0\n"), "a missing environment.yml must count as stale"


def test_every_requirement_line_is_an_exact_pin():
    loose = [
        line
        for line in LOCK_TEXT.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "==" not in line
    ]
    assert not loose, f"requirements.lock has unpinned lines: {loose}"


@pytest.mark.parametrize(
    "package, pattern",
    [
        ("jupyter-book", r"1\.\d+\.\d+.*"),
        ("jupyterlab", r"4\.6\.\d+"),
        ("notebook", r"7\.6\.\d+"),
        ("nbgrader", r"0\.9\.6"),
        ("tensorflow", r"2\.21\.\d+"),
        ("pyspark", r"4\.3\.\d+"),
        ("grpcio-tools", r".+"),
        ("docker", r".+"),
        ("kubernetes", r".+"),
    ],
)
def test_course_pins(package, pattern):
    assert re.fullmatch(pattern, PINS.get(package, "")), f"{package} pinned to {PINS.get(package)}"


def test_no_tensorflow_cpu():
    # tensorflow-serving-api pulls `tensorflow`; a second TF wheel would clash with it.
    assert "tensorflow-cpu" not in PINS


def test_installed_environment_matches_the_lock():
    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    # Only the venv's own site-packages: setuptools puts vendored copies on sys.path.
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    installed = {
        canonical(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions(path=site_packages)
    }
    wrong = {
        name: (version, installed.get(canonical(name)))
        for name, version in PINS.items()
        if installed.get(canonical(name)) != version
    }
    assert not wrong, f"installed versions differ from the lock (locked, installed): {wrong}; run `make venv`"


def test_python_is_3_11():
    assert sys.version_info[:2] == (3, 11)


def test_derive_env_check_cli_passes():
    result = subprocess.run(
        [sys.executable, "-m", "dlcloud_course.environment", "--check"], capture_output=True, text=True,
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}
    )
    assert result.returncode == 0, result.stderr
