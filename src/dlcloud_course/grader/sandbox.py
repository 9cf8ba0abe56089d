"""One submission, one container: no network, small limits, nothing of the course inside.

The container runs :mod:`.runner` from the grading image as a non-root user, with a
read-only root file system, every capability dropped, ``no-new-privileges``, limits on
memory (swap included), CPU, processes and the size of its writable ``tmpfs``, and
``--init`` so that every process it starts is reaped. The plan and a fresh key go in
on standard input; the only thing that comes back is standard output, read with a byte
cap while the container runs, and killed at the cap or at the wall-clock limit. The
container is removed in a ``finally``; :func:`leftovers` checks by label that nothing
is left.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

import docker.errors

from .engine_broker import SANDBOX_DOCKER_HOST, SANDBOX_SOCKET_DIR, engine_flags
from .image import ENGINE_WHEELS_DIR, NATIVE_DIR, RUNNER_PATH, SANDBOX_UID, VENV_PYTHON

SANDBOX_LABEL = "dlcloud.grader.sandbox"
SANDBOX_ENVIRONMENT = {
    "HOME": "/home/student", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    # Java is Debian's OpenJDK 17 of the course base (dlcloud.java finds /usr/bin/java).
    "PATH": "/opt/venv/bin:/usr/bin:/bin",
    # TensorFlow and Spark read these rather than the cgroup's CPU quota.
    "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "", "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": VENV_PYTHON,
    # /tmp is noexec: snappy-java (Spark's Parquet) loads the copy the image extracted
    # (image.NATIVE_DIR) instead of extracting its library to /tmp and failing to map it.
    "JAVA_TOOL_OPTIONS": f"-Dorg.xerial.snappy.lib.path={NATIVE_DIR} "
                         "-Dorg.xerial.snappy.lib.name=libsnappyjava.so",
}


def engine_environment(engine) -> dict[str, str]:
    """What a lab that builds images needs to find its engine, its base image and wheels."""
    return {
        "DOCKER_HOST": SANDBOX_DOCKER_HOST,
        "DLCLOUD_BASE_IMAGE": engine.base_images[0],
        # pip download (lab 2's wheelhouse) finds the wheels in the image: nothing downloads.
        "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ENGINE_WHEELS_DIR,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


@dataclass(frozen=True)
class Limits:
    """What one submission may use. The same values become Kubernetes resource limits."""

    memory_mb: int = 1536
    cpus: float = 1.0
    pids: int = 64
    tmpfs_mb: int = 64
    wall_s: float = 180.0
    output_bytes: int = 256 * 1024
    cell_s: float = 120.0  # one cell, timed by the supervisor inside the sandbox
    nofile: int = 256

    @property
    def notebook_s(self) -> float:
        """The supervisor's limit for the whole notebook: it must sign before the host kills."""
        return max(5.0, self.wall_s - min(20.0, self.wall_s / 4))


@dataclass
class SandboxResult:
    output: bytes
    exit_code: int | None
    wall_s: float
    flags: list[tuple[str, str]] = field(default_factory=list)


def container_settings(image: str, limits: Limits, labels: dict[str, str],
                       lab_dir: str | None, engine=None) -> dict:
    """The keyword arguments of ``containers.create``: every restriction in one place.

    ``engine`` (an :class:`.engine_broker.EngineBroker`, started) is the only thing ever
    mounted besides ``lab_dir``: the folder of the broker's socket, read-only.
    """
    # noexec: nothing written there can be run or loaded as native code (dlopen fails).
    tmpfs_options = f"size={limits.tmpfs_mb}m,mode=1777,nosuid,nodev,noexec"
    volumes = {lab_dir: {"bind": "/lab", "mode": "ro"}} if lab_dir else {}
    environment = dict(SANDBOX_ENVIRONMENT)
    if engine is not None:
        volumes[engine.folder] = {"bind": SANDBOX_SOCKET_DIR, "mode": "ro"}
        environment.update(engine_environment(engine))
    return {
        "image": image,
        # Started as root with only SETUID and SETGID: the supervisor starts the worker
        # as SANDBOX_UID, then becomes SUPERVISOR_UID itself, and both have no capability
        # left (see runner.supervise). Nothing runs as root once a cell could run.
        "command": [VENV_PYTHON, "-I", RUNNER_PATH, "--split-uids"],
        "user": "0:0",
        "working_dir": "/home/student",
        "environment": environment,
        "network_mode": "none",
        "read_only": True,
        # The engine ignores a tmpfs "mode" (the home was root's 0755); uid/gid reach the kernel.
        "tmpfs": {"/tmp": tmpfs_options,
                  "/home/student": f"{tmpfs_options},uid={SANDBOX_UID},gid={SANDBOX_UID}"},
        "volumes": volumes,
        "mem_limit": f"{limits.memory_mb}m",
        "memswap_limit": f"{limits.memory_mb}m",  # equal to the memory limit: no swap
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "cap_drop": ["ALL"],
        "cap_add": ["SETUID", "SETGID"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "ipc_mode": "private",
        "ulimits": [docker.types.Ulimit(name="core", soft=0, hard=0),
                 docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile)],
        "log_config": docker.types.LogConfig(
            type="json-file", config={"max-size": f"{max(limits.output_bytes * 2, 65536)}",
                                      "max-file": "1"}),
        # stdin_open with detach=False makes the engine set StdinOnce: the runner sees
        # EOF when we close our end, and nobody can attach to its stdin afterwards.
        "stdin_open": True,
        "detach": False,
        "labels": {SANDBOX_LABEL: "1", **labels},
    }


#: How long a control call to the engine (create, kill, inspect, remove) may take: a
#: busy or stuck engine must not hang the whole class.
ENGINE_CALL_S = 90


class EngineStuck(RuntimeError):
    """The Docker Engine did not answer a control call in time."""


def _bounded(call, seconds: float = ENGINE_CALL_S):
    """``call()``, or :class:`EngineStuck` when it has not returned after ``seconds``."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 -- handed back to the caller
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise EngineStuck(f"the Docker Engine did not answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _read_capped(container, cap: int, sink: dict) -> None:
    received = bytearray()
    try:
        for chunk in container.logs(stdout=True, stderr=False, stream=True, follow=True):
            received.extend(chunk)
            if len(received) > cap:
                sink["over_cap"] = True
                break
    except (docker.errors.APIError, OSError, ValueError):
        pass
    sink["output"] = bytes(received[:cap])


def plan_payload(plan_cells: list[dict], key: bytes, limits: Limits, policy: dict | None = None,
                 files: dict[str, str] | None = None) -> bytes:
    """What goes in on standard input: the key, then the plan with its limits and policy."""
    return key.hex().encode() + b"\n" + json.dumps({
        "cells": plan_cells, "pids_limit": limits.pids,
        "limits": {"cell_s": limits.cell_s, "notebook_s": limits.notebook_s},
        "policy": policy or {}, "files": files or {}}).encode()


def run_in_sandbox(client, image: str, plan_cells: list[dict], key: bytes,
                   limits: Limits = Limits(), labels: dict[str, str] | None = None,
                   lab_dir: str | None = None, policy: dict | None = None,
                   files: dict[str, str] | None = None, engine=None) -> SandboxResult:
    """Run one plan in a fresh container; return its capped output and what went wrong.

    ``engine``: a started :class:`.engine_broker.EngineBroker` for a lab that builds
    images; it learns the container's id (its containers join that network namespace)
    and is closed here, removing what the submission made, however the run ended.
    """
    payload = plan_payload(plan_cells, key, limits, policy, files)
    settings = container_settings(image, limits, {"dlcloud.grader.run": secrets.token_hex(6),
                                                  **(labels or {})}, lab_dir, engine)
    started = time.monotonic()
    flags: list[tuple[str, str]] = []
    sink: dict = {}
    try:
        container = _bounded(lambda: client.containers.create(**settings))
    except (EngineStuck, docker.errors.APIError) as error:
        flags.append(("engine-error", f"the sandbox could not be created: {str(error)[:150]}"))
        if engine is not None:
            engine.close()
        return SandboxResult(b"", None, time.monotonic() - started, flags)
    if engine is not None:
        engine.attach(container.id)
    try:
        _send_stdin_before_start(container, payload)
        reader = threading.Thread(target=_read_capped, args=(container, limits.output_bytes, sink),
                                  daemon=True)
        reader.start()
        reader.join(timeout=limits.wall_s)
        exit_code = _stop(container, reader, sink, limits, flags)
        state = container.attrs.get("State", {})
        if state.get("OOMKilled"):
            flags.append(("memory-limit", f"killed at the memory limit of {limits.memory_mb} MB"))
        elif exit_code == 137 and not flags:
            # Killed, and not by us: with --init the engine does not always see the OOM.
            why = f"killed (exit 137), most likely at the memory limit of {limits.memory_mb} MB"
            flags.append(("killed", why))
    except EngineStuck as error:
        flags.append(("engine-error", str(error)))
        exit_code = None
    finally:
        if engine is not None:  # first: the submission's containers share the sandbox's network
            engine.close()
            flags.extend(engine_flags(engine))
        try:
            _bounded(lambda: container.remove(force=True))
        except (EngineStuck, docker.errors.APIError):
            pass  # leftovers() names it; the command then fails
    return SandboxResult(sink.get("output", b""), exit_code, time.monotonic() - started, flags)


def _send_stdin_before_start(container, payload: bytes) -> None:
    # Attach first, then start: the runner blocks on stdin until the plan is there.
    sender = threading.Thread(target=_send_stdin_after_attach, args=(container, payload),
                              daemon=True)
    sender.start()
    sender.join(timeout=30)


def _send_stdin_after_attach(container, payload: bytes) -> None:
    sock = container.attach_socket(params={"stdin": 1, "stream": 1})
    raw = getattr(sock, "_sock", sock)
    try:
        container.start()
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
    finally:
        raw.close()


def _stop(container, reader, sink, limits: Limits, flags) -> int | None:
    if reader.is_alive() or sink.get("over_cap"):
        if sink.get("over_cap"):
            flags.append(("output-limit", f"wrote more than {limits.output_bytes} bytes"))
        else:
            flags.append(("timeout", f"still running after {limits.wall_s:.0f} s"))
        try:
            _bounded(container.kill)
        except docker.errors.APIError:
            pass
        reader.join(timeout=10)
    try:
        result = _bounded(lambda: container.wait(timeout=30))
    except Exception:  # noqa: BLE001 -- a container that will not stop is removed by force
        return None
    _bounded(container.reload)
    return result.get("StatusCode")


def leftovers(client, label: str = SANDBOX_LABEL) -> list[str]:
    """Containers of sandboxes that still exist (there should be none after grading)."""
    return [c.short_id for c in client.containers.list(all=True, filters={"label": label})]
