"""The engine broker: lab 2's sandbox gets an engine that builds and runs only its own things.

The first tests check the broker's decisions without an engine (the Dockerfile check, the
container settings it refuses or rewrites); the Docker tests put a real broker in front of
the real engine and use it with the Docker SDK, as lab 2's cells do, from the outside of a
stand-in sandbox container whose network the broker's containers must join.
"""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from dlcloud_course.grader.engine_broker import (
    OWNER_LABEL,
    EngineBroker,
    Refused,
    dockerfile_problem,
)

BASE = "example/base:1"
LAB2_DOCKERFILE = """\
# comment
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS builder
RUN python3 -m venv /opt/venv \\
 && true
FROM ${BASE_IMAGE} AS runtime
COPY --from=builder /opt/venv /opt/venv
"""


@pytest.mark.parametrize(("dockerfile", "problem"), [
    (LAB2_DOCKERFILE, None),
    ("FROM busybox\n", "FROM busybox"),
    ("ARG B=dlcloud/grader:abc\nFROM $B\n", "FROM dlcloud/grader:abc"),
    (f"FROM {BASE}\nCOPY --from=dlcloud/course-image:dev /opt /opt\n", "COPY --from=dlcloud/course-image:dev"),
    (f"FROM {BASE}\nADD https://example.com/x.tar /x\n", "ADD of a URL"),
    (f"FROM {BASE}\nADD \\\n  git@github.com:a/b.git /b\n", "ADD of a URL"),
    (f"FROM {BASE}\nONBUILD RUN id\n", "ONBUILD"),
    (f"# escape=`\nFROM {BASE}\n", "escape"),
    (f"FROM {BASE} AS one\nFROM one\nCOPY --from=0 /a /a\n", None),
])
def test_dockerfile_check(dockerfile, problem):
    found = dockerfile_problem(dockerfile, {"BASE_IMAGE": BASE}, {BASE, "scratch"})
    if problem is None:
        assert found is None, f"an honest Dockerfile was refused: {found}"
    else:
        assert found and problem in found, f"expected a refusal naming {problem!r}, got {found!r}"


def _broker() -> EngineBroker:
    return EngineBroker(client=None, base_images=(BASE,), data_binds={"/data/f.csv": "/srv/f.csv"},
                        sandbox_id="sandbox123")


@pytest.mark.parametrize("asked", [
    {"Privileged": True}, {"PidMode": "host"}, {"CapAdd": ["SYS_ADMIN"]}, {"IpcMode": "host"},
    {"Devices": [{"PathOnHost": "/dev/kmsg"}]}, {"UsernsMode": "host"}, {"Runtime": "runc"},
    {"Binds": ["/:/host"]}, {"Binds": ["/var/run/docker.sock:/s"]}, {"VolumesFrom": ["other"]},
    {"SecurityOpt": ["seccomp=unconfined"]}, {"RestartPolicy": {"Name": "always"}},
    {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/e"}]},
])
def test_container_settings_that_would_give_the_host_are_refused(asked):
    broker = _broker()
    with pytest.raises(Refused) as refused:
        broker.host_config(asked)
    assert refused.value.status in (400, 403) and broker.refusals, refused.value.reason


def test_containers_join_the_sandbox_network_with_limits_and_no_capabilities():
    config = _broker().host_config({"NetworkMode": "host", "Memory": 8 * 2**30,
                                    "Binds": ["/data/f.csv:/data/flights.csv:rw"]})
    assert config["NetworkMode"] == "container:sandbox123", config
    assert config["Memory"] == config["MemorySwap"] <= 768 * 2**20 and config["PidsLimit"], config
    assert config["CapDrop"] == ["ALL"] and config["SecurityOpt"] == ["no-new-privileges"], config
    assert config["Binds"] == ["/srv/f.csv:/data/flights.csv:ro"], "a data file is the host's copy, read-only"
    assert _broker().host_config({"NetworkMode": "none"})["NetworkMode"] == "none"


# -- with a real engine ------------------------------------------------------------------


@pytest.fixture
def brokered(docker_client, local_base_image):
    """A broker, a stand-in sandbox (a container with no network) and an SDK client of the broker."""
    import docker
    from docker_support import SESSION_LABELS

    sandbox = docker_client.containers.run(local_base_image, ["sleep", "600"], detach=True,
                                           network_mode="none", labels=SESSION_LABELS)
    broker = EngineBroker(docker_client, (local_base_image,),
                          data_binds={"/sandbox/data/hostname": "/etc/hostname"})
    folder = broker.start()
    broker.attach(sandbox.id)
    try:
        yield broker, docker.DockerClient(base_url=f"unix://{folder}/docker.sock"), sandbox
    finally:
        broker.close()
        sandbox.remove(force=True)


def _context(dockerfile: str) -> io.BytesIO:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        body = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    data.seek(0)
    return data


SERVER = ("ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS one\nRUN echo built > /built\n"
          "FROM ${BASE_IMAGE}\nCOPY --from=one /built /built\nUSER 1000\n"
          'CMD ["python3", "-m", "http.server", "8765", "--bind", "127.0.0.1"]\n')


@pytest.mark.docker
def test_a_submission_builds_runs_and_saves_its_own_images_and_nothing_is_left(brokered, docker_client,
                                                                              local_base_image):
    import docker

    broker, engine, sandbox = brokered
    log = list(engine.api.build(fileobj=_context(SERVER), custom_context=True, tag="mine/app:1",
                                buildargs={"BASE_IMAGE": local_base_image}, decode=True))
    assert any("Successfully built" in m.get("stream", "") for m in log), log[-3:]
    image = engine.images.get("mine/app:1")
    assert [i.tags for i in engine.images.list()] == [["mine/app:1"]], "a list shows this submission's images only"
    assert len(image.history()) >= 3 and sum(len(c) for c in image.save(named=False)) > 1e6

    volume = engine.volumes.create(name=f"v-{broker.owner}")
    server = engine.containers.run(image.id, detach=True, network_mode="host", mem_limit="4g",
                                   volumes={"/sandbox/data/hostname": {"bind": "/h", "mode": "rw"},
                                            volume.name: {"bind": "/v", "mode": "rw"}})
    server.reload()
    assert server.attrs["HostConfig"]["NetworkMode"] == f"container:{sandbox.id}"
    assert server.attrs["HostConfig"]["Memory"] <= 768 * 2**20 and server.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    for _ in range(40):  # the sandbox reaches the container on its own loopback
        answer = sandbox.exec_run(["python3", "-c", "import urllib.request as u;"
                                   "print(u.urlopen('http://127.0.0.1:8765/').status)"])
        if answer.output.strip() == b"200":
            break
        time.sleep(0.25)
    assert answer.output.strip() == b"200", answer.output
    assert engine.containers.run(image.id, ["id", "-u"], network_mode="host", remove=True).strip() == b"1000"

    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get("dlcloud/course-image:dev")  # exists or not: not this submission's
    for attempt in (lambda: engine.containers.run(image.id, ["true"], privileged=True),
                    lambda: engine.containers.run(image.id, ["true"], volumes={"/": {"bind": "/host"}}),
                    lambda: list(engine.api.build(fileobj=_context(f"FROM {local_base_image}\n"),
                                                  custom_context=True, tag=local_base_image))):
        with pytest.raises(docker.errors.APIError):
            attempt()
    assert len(broker.refusals) == 3, broker.refusals

    removed = broker.close()
    label = f"{OWNER_LABEL}={broker.owner}"
    assert not docker_client.containers.list(all=True, filters={"label": label})
    assert not docker_client.images.list(all=True, filters={"label": label})
    assert not docker_client.volumes.list(filters={"label": label})
    assert len(removed["images"]) >= 4, f"the first stage's image and the steps go too: {removed}"
    assert docker_client.images.get(local_base_image), "the base image stays"
