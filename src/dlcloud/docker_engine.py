"""Plumbing for the Docker lab: find an engine, a base image and a wheelhouse.

Students learn Dockerfiles, builds, layers and containers in the lab itself; this
module only hides what differs between the places where the course runs:

- :func:`connect` finds a Docker Engine (``DOCKER_HOST`` or the default socket) and
  says clearly what to do when there is none (on Binder there never is one);
- :func:`base_image` names the image that the lab's Dockerfiles start ``FROM``: a
  pinned public Python image, or a locally built one where no registry is reachable;
- :func:`build_local_base_image` builds that local image from Debian packages with
  ``debootstrap`` and ``docker import``, once per machine;
- :func:`prepare_wheelhouse` downloads the exact wheels a service needs with
  ``pip download``, so that ``docker build`` never needs the network;
- :func:`record_builds` notes the images a client's builds create (read from their
  logs), and :func:`remove_labelled` removes every container and image that carries a
  label, plus those recorded images, so that a lab or a test leaves nothing behind even
  when it fails half-way, and removes nothing that someone else built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import docker
import docker.errors

__all__ = ["DockerUnavailable", "connect", "base_image", "build_local_base_image", "prepare_wheelhouse",
           "images_created", "record_builds", "stop_recording", "remove_labelled"]

#: What students on a JupyterHub with internet access build ``FROM``. Pinned to a
#: Python minor version and a Debian release; pin a digest for full reproducibility.
PUBLIC_BASE_IMAGE = "python:3.11-slim-bookworm"
#: The tag of the image that :func:`build_local_base_image` builds.
LOCAL_BASE_IMAGE = "dlcloud/debian-python:bookworm"
#: The Debian packages of the local base image: Python 3.11 with ``venv`` (and so
#: ``ensurepip``), plus ``passwd`` for ``useradd`` as in the official slim images.
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


class DockerUnavailable(RuntimeError):
    """No Docker Engine answers, or one that is needed cannot be started."""


def _engine_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def _no_engine_message(url: str, error: object) -> str:
    return (
        f"No Docker Engine answers at {url} ({error}). This lab needs one to build and "
        "run images. Use the course JupyterHub, whose servers come with a Docker Engine, "
        "or install Docker Engine (Linux) or Docker Desktop (macOS, Windows) on your own "
        "computer, start it, and set DOCKER_HOST if it does not listen on the default "
        "socket. On Binder there is no Docker Engine: there you can read and write the "
        "Dockerfile and check it with hadolint, but not build or run images."
    )


def connect(timeout_s: float = 10.0) -> docker.DockerClient:
    """A client for the engine at ``DOCKER_HOST`` or the default socket, or :class:`DockerUnavailable`."""
    url = _engine_url()
    try:
        client = docker.DockerClient(base_url=url, timeout=int(max(timeout_s, 1)))
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        raise DockerUnavailable(_no_engine_message(url, error)) from error
    # Builds and image exports take longer than a ping: no read timeout from here on.
    client.api.timeout = None
    return client


def base_image() -> str:
    """The image to pass as the ``BASE_IMAGE`` build argument of the lab's Dockerfiles.

    ``DLCLOUD_BASE_IMAGE`` if it is set (machines without a registry set it to the image
    of :func:`build_local_base_image`), else :data:`PUBLIC_BASE_IMAGE`.
    """
    return os.environ.get("DLCLOUD_BASE_IMAGE") or PUBLIC_BASE_IMAGE


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_local_base_image(
    tag: str = LOCAL_BASE_IMAGE,
    client: docker.DockerClient | None = None,
    mirror: str | None = None,
    suite: str = "bookworm",
    packages: tuple[str, ...] = LOCAL_BASE_PACKAGES,
) -> str:
    """Build a Debian + Python 3.11 base image without any registry, once per machine.

    ``debootstrap --variant=minbase`` installs Debian ``suite`` (bookworm ships Python
    3.11) with ``packages`` (:data:`LOCAL_BASE_PACKAGES` by default) into a folder from a Debian mirror
    (``DLCLOUD_DEBIAN_MIRROR`` or deb.debian.org), and ``docker import`` turns that
    folder into a one-layer image. If ``tag`` already exists, nothing is built.
    Returns ``tag``. Needs root and the ``debootstrap`` binary.
    """
    client = client or connect()
    if image_exists(client, tag):
        return tag
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None or os.geteuid() != 0:
        raise DockerUnavailable(
            f"Image {tag} is missing and cannot be built here: building it needs root and "
            "debootstrap (apt-get install debootstrap). Or set DLCLOUD_BASE_IMAGE to an "
            f"image you have, e.g. {PUBLIC_BASE_IMAGE} where a registry is reachable."
        )
    mirror = mirror or os.environ.get("DLCLOUD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(prefix="dlcloud-rootfs-") as work:
        root = Path(work) / "rootfs"
        result = subprocess.run(  # noqa: S603 -- fixed arguments
            [debootstrap, "--variant=minbase", f"--include={','.join(packages)}",
             suite, str(root), mirror],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise DockerUnavailable(
                f"debootstrap {suite} from {mirror} failed:\n{result.stdout[-2000:]}"
                f"\n{result.stderr[-2000:]}"
            )
        # Keep the image small: no package lists, caches, docs or man pages.
        for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "var/log"):
            target = root / junk
            if target.exists():
                shutil.rmtree(target)
                target.mkdir(parents=True)
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(  # noqa: S603 -- fixed arguments
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True
        )
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:
            repository, version = tag, "latest"
        client.api.import_image_from_file(
            str(tarball), repository=repository, tag=version,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
                "LABEL org.opencontainers.image.description="
                f"\"Debian {suite} minbase with Python 3 (dlcloud local base image)\"",
            ],
        )
    if not image_exists(client, tag):
        raise DockerUnavailable(f"docker import did not produce {tag}.")
    return tag


def _requirements_digest(requirements_file: Path, platforms: tuple[str, ...], python: str) -> str:
    text = Path(requirements_file).read_text()
    return hashlib.sha256(f"{text}|{platforms}|{python}".encode()).hexdigest()[:16]


def prepare_wheelhouse(
    requirements_file: str | os.PathLike,
    dest: str | os.PathLike,
    python_version: str = "3.11",
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux2014_x86_64"),
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download the exact wheels of ``requirements_file`` into ``dest`` for a Linux image.

    ``pip download --only-binary=:all:`` for CPython ``python_version`` on x86_64
    manylinux, whatever the machine that runs it: the wheels then install in a
    ``docker build`` that has no network (``pip install --no-index --find-links``).
    The result is cached twice: ``dest`` keeps a stamp of the requirements it holds,
    and a per-machine copy in ``cache_dir`` (``DLCLOUD_WHEELHOUSE_CACHE`` or
    ``~/.cache/dlcloud/wheelhouses``) spares the download in a fresh folder.
    """
    dest = Path(dest)
    digest = _requirements_digest(Path(requirements_file), platforms, python_version)
    stamp = dest / ".requirements-digest"
    if stamp.exists() and stamp.read_text().strip() == digest and any(dest.glob("*.whl")):
        return dest
    cache_root = Path(
        cache_dir or os.environ.get("DLCLOUD_WHEELHOUSE_CACHE", "")
        or Path.home() / ".cache" / "dlcloud" / "wheelhouses"
    )
    cached = cache_root / digest
    if not (cached / ".complete").exists():
        partial = cache_root / f"{digest}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
            "--abi", f"cp{python_version.replace('.', '')}",
            *(arg for platform in platforms for arg in ("--platform", platform)),
            "--dest", str(partial), "-r", str(requirements_file),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"pip download failed:\n{result.stdout}\n{result.stderr}")
        (partial / ".complete").write_text(digest + "\n")
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    for wheel in cached.glob("*.whl"):
        shutil.copy2(wheel, dest / wheel.name)
    stamp.write_text(digest + "\n")
    return dest


_STEP = re.compile(r"^Step \d+/\d+ : (.*)$")
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


class _BuildLogReader:
    """Reads a legacy build's messages one by one and adds the images it creates to ``created``.

    The legacy builder ends each step with `` ---> <image id>``: the image the step
    committed, or, after `` ---> Using cache``, an image that was already there (maybe
    another build's), or, for a ``FROM`` step, the stage's starting image. Only the first
    kind is this build's. Messages are dicts (``decode=True``) or raw JSON bytes.
    """

    def __init__(self, created: set[str]):
        self.created = created
        self._raw = ""  # undecoded JSON not yet complete
        self._text = ""  # log text after the last newline
        self._fresh = False  # does the current step commit a new image?

    def feed(self, item: object) -> None:
        if isinstance(item, dict):
            self._message(item)
            return
        if isinstance(item, bytes):
            item = item.decode("utf-8", errors="replace")
        if not isinstance(item, str):
            return
        self._raw += item
        decoder = json.JSONDecoder()
        while self._raw.strip():
            text = self._raw.lstrip()
            try:
                message, end = decoder.raw_decode(text)
            except ValueError:  # an incomplete message: wait for the next chunk
                self._raw = text
                return
            self._raw = text[end:]
            if isinstance(message, dict):
                self._message(message)
        self._raw = ""

    def _message(self, message: dict) -> None:
        text = message.get("stream")
        if not isinstance(text, str):
            return
        *lines, self._text = (self._text + text).split("\n")
        for line in lines:
            self._line(line.rstrip("\r"))

    def _line(self, line: str) -> None:
        if step := _STEP.match(line):
            self._fresh = not step.group(1).lstrip().upper().startswith("FROM ")
        elif line.strip() == "---> Using cache":
            self._fresh = False
        elif self._fresh and (image := _STEP_IMAGE.match(line)):
            self.created.add(image.group(1))


def images_created(messages: Iterable[object]) -> set[str]:
    """The short ids of the images that a legacy build's log says the build committed.

    ``messages`` is what ``client.api.build`` streams (dicts with ``decode=True``, else
    chunks of JSON). Images taken from the build cache and the images that ``FROM`` steps
    start from are not in the result: they were there before, and may be someone else's.
    (A ``RUN`` step that itself prints a line `` ---> <hex id>`` adds that id too.)
    """
    created: set[str] = set()
    reader = _BuildLogReader(created)
    for message in messages:
        reader.feed(message)
    return created


def _recording(stream: Iterator[object], readers: list[_BuildLogReader]) -> Iterator[object]:
    for item in stream:
        for reader in readers:
            reader.feed(item)
        yield item


def record_builds(client: docker.DockerClient) -> set[str]:
    """From now on, collect the images that builds through ``client`` commit; returns the set.

    Wraps ``client.api.build`` (which ``client.images.build`` calls too): the stream it
    returns is passed on unchanged, and read on the way by :func:`images_created`. The
    set grows as the builds' logs are read, and lists every image the builds created,
    among them the last image of each earlier stage of a multi-stage build, which the
    legacy builder leaves untagged and unlabelled. Pass it to :func:`remove_labelled` as
    ``also_remove``. Builds with ``quiet=True`` stream no log, and are not recorded.
    :func:`stop_recording` ends the recording into one set.
    """
    api = client.api
    recorders = api.__dict__.get("_dlcloud_build_recorders")
    if recorders is None:
        recorders = api._dlcloud_build_recorders = {}
        build = api.build

        @functools.wraps(build)
        def recorded_build(*args, **kwargs):
            stream = build(*args, **kwargs)
            return _recording(stream, [_BuildLogReader(created) for created in recorders.values()])

        api.build = recorded_build
    created: set[str] = set()
    recorders[id(created)] = created
    return created


def stop_recording(client: docker.DockerClient, created: set[str]) -> None:
    """Stop adding to ``created``, a set that :func:`record_builds` returned for ``client``."""
    client.api.__dict__.get("_dlcloud_build_recorders", {}).pop(id(created), None)


def remove_labelled(
    client: docker.DockerClient, label: str, also_remove: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Remove every container, then every image, that carries ``label`` (``key`` or ``key=value``).

    The legacy builder puts ``docker build --label`` only on the final image; the last
    image of every other stage of a multi-stage build stays behind untagged
    ("dangling"). ``also_remove`` names such images by id, as :func:`record_builds`
    collects them from the caller's own builds; no other unlabelled image is touched, so
    that what other users of the engine or concurrent builds made stays. They are removed
    after the labelled ones and without force, so that an image still in use elsewhere
    (by a container, as the parent of another build's image, or under a tag someone gave
    it) is kept. Returns what was removed.
    Errors on single objects are ignored so that a cleanup in a ``finally`` always gets
    as far as it can.
    """
    removed: dict[str, list[str]] = {"containers": [], "images": []}
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True)
            removed["containers"].append(container.short_id)
        except docker.errors.APIError:
            pass
    # Children before parents: retry until a pass removes nothing more.
    for _ in range(5):
        images = client.images.list(all=True, filters={"label": label})
        progress = False
        for image in images:
            try:
                client.images.remove(image.id, force=True)
                removed["images"].append(image.short_id)
                progress = True
            except docker.errors.ImageNotFound:
                progress = True
            except docker.errors.APIError:
                pass
        if not images or not progress:
            break
    pending = set(also_remove)
    for _ in range(5):
        progress = False
        for image_id in sorted(pending):
            try:
                if client.images.get(image_id).tags:  # someone tagged it: theirs now
                    pending.discard(image_id)
                    continue
                client.images.remove(image_id, force=False)
                removed["images"].append(image_id.removeprefix("sha256:")[:12])
            except docker.errors.ImageNotFound:  # gone already, e.g. with its child
                pass
            except docker.errors.APIError:  # in use: maybe by a child we remove next
                continue
            pending.discard(image_id)
            progress = True
        if not pending or not progress:
            break
    return removed
