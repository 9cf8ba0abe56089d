"""Start a Docker Engine on this machine the way the course's tests and CI expect.

``dockerd --bridge=none --iptables=false``: no bridge network, so containers use host
networking or none, and nothing outside loopback is ever addressed. Students never need
this: their engine is Docker Desktop, a hub's, or their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from dlcloud import docker_engine
from dlcloud.docker_engine import DockerUnavailable, connect

DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false")
DOCKERD_LOG = Path(tempfile.gettempdir()) / "dlcloud-dockerd.log"


def start_dockerd(timeout_s: float = 60.0, log_file: Path = DOCKERD_LOG) -> docker.DockerClient:
    """Connect, starting ``dockerd`` first if no engine answers (tests and CI only).

    The engine is started without a bridge network and without touching iptables, the
    setup of this course's CI machines: containers then use the host network. Needs
    the ``dockerd`` binary and root; otherwise raises :class:`DockerUnavailable`.
    """
    try:
        return connect(timeout_s=3)
    except DockerUnavailable as error:
        first_error = error
    if docker_engine._engine_url() != docker_engine.DEFAULT_SOCKET:
        # A dockerd we start listens on the default socket: never "replace" another engine.
        raise first_error
    dockerd = shutil.which("dockerd") or next(
        (p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if Path(p).exists()), None
    )
    if dockerd is None:
        raise DockerUnavailable(f"{first_error} (and there is no dockerd binary to start one)")
    if os.geteuid() != 0:
        raise DockerUnavailable(f"{first_error} (dockerd exists but starting it needs root)")
    log = open(log_file, "ab")  # noqa: SIM115 -- stays open for the daemon's lifetime
    subprocess.Popen(  # noqa: S603 -- fixed arguments
        [dockerd, *DOCKERD_FLAGS], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return connect(timeout_s=3)
        except DockerUnavailable:
            time.sleep(0.5)
    raise DockerUnavailable(
        f"Started {dockerd} but it did not answer within {timeout_s:.0f} s; see {log_file}."
    )
