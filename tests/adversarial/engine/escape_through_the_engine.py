# expect: engine-refused
# ruff: noqa -- written as a student would: this is the attack, not project code
# Lab 2 has an engine: use it to get out. Every one of these would give the host (or
# another student's work) to a student on a plain Docker socket.
import io, tarfile
import docker
engine = docker.from_env()
attempts = [
    lambda: engine.containers.run(BASE_IMAGE, ["cat", "/host/etc/shadow"], privileged=True,
                                  volumes={"/": {"bind": "/host", "mode": "rw"}}, remove=True),
    lambda: engine.containers.run(BASE_IMAGE, ["true"], pid_mode="host", remove=True),
    lambda: engine.containers.run(BASE_IMAGE, ["true"], cap_add=["SYS_ADMIN"], remove=True),
    lambda: engine.containers.run(BASE_IMAGE, ["true"], devices=["/dev/kmsg"], remove=True),
    lambda: engine.volumes.create("grab-root", driver_opts={"type": "none", "o": "bind", "device": "/"}),
    lambda: engine.images.list(all=True),  # answers, but with this submission's images only
    lambda: engine.images.get("dlcloud/grader"),  # the grading image: 404, not yours
]


def _context(dockerfile):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        body = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    data.seek(0)
    return data


for dockerfile, tag in [(f"FROM {BASE_IMAGE}\nADD https://pypi.org/simple/ /x\n", "mine/x:1"),
                        ("FROM dlcloud/course-image:dev\nRUN cat /opt/*\n", "mine/y:1"),
                        (f"FROM {BASE_IMAGE}\nRUN true\n", BASE_IMAGE)]:  # steal the base's tag
    attempts.append(lambda d=dockerfile, t=tag: list(engine.api.build(
        fileobj=_context(d), custom_context=True, tag=t, network_mode="host")))
for attempt in attempts:
    try:
        attempt()
    except Exception:
        pass
