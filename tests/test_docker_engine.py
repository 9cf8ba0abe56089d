"""dlcloud.docker_engine: unit tests without an engine, then tests on a real engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dlcloud import docker_engine
from dlcloud.docker_engine import DockerUnavailable
from dlcloud_course import docker_host


def test_base_image_defaults_to_a_pinned_public_image(monkeypatch):
    monkeypatch.delenv("DLCLOUD_BASE_IMAGE", raising=False)
    assert docker_engine.base_image() == "python:3.11-slim-bookworm"


def test_base_image_follows_the_environment(monkeypatch):
    monkeypatch.setenv("DLCLOUD_BASE_IMAGE", "dlcloud/debian-python:bookworm")
    assert docker_engine.base_image() == "dlcloud/debian-python:bookworm"


def test_connect_without_engine_says_what_is_missing_and_where_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-such.sock'}")
    with pytest.raises(DockerUnavailable) as raised:
        docker_engine.connect(timeout_s=2)
    message = str(raised.value)
    assert "No Docker Engine answers" in message and "no-such.sock" in message
    assert "JupyterHub" in message and "Docker Desktop" in message and "Binder" in message


def test_start_dockerd_refuses_without_root_or_binary(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(docker_engine, "DEFAULT_SOCKET", f"unix://{tmp_path / 'no-such.sock'}")
    monkeypatch.setattr(docker_host.shutil, "which", lambda name: None)
    monkeypatch.setattr(docker_host.Path, "exists", lambda self: False)
    with pytest.raises(DockerUnavailable, match="no dockerd binary"):
        docker_host.start_dockerd(timeout_s=1)


def test_start_dockerd_never_replaces_another_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(docker_host.shutil, "which", lambda name: "/usr/sbin/dockerd")
    monkeypatch.setattr(docker_host.subprocess, "Popen", lambda *a, **k: pytest.fail("started dockerd"))
    for url in ("tcp://127.0.0.1:9", f"unix://{tmp_path / 'other.sock'}"):  # nothing answers there
        monkeypatch.setenv("DOCKER_HOST", url)
        with pytest.raises(DockerUnavailable, match="No Docker Engine answers"):
            docker_host.start_dockerd(timeout_s=1)


def test_prepare_wheelhouse_downloads_once_and_caches(monkeypatch, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("idna==3.20\n")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        (dest / "idna-3.20-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(docker_engine.subprocess, "run", fake_run)
    cache = tmp_path / "cache"
    first = docker_engine.prepare_wheelhouse(requirements, tmp_path / "a", cache_dir=cache)
    again = docker_engine.prepare_wheelhouse(requirements, tmp_path / "a", cache_dir=cache)
    other = docker_engine.prepare_wheelhouse(requirements, tmp_path / "b", cache_dir=cache)
    assert len(calls) == 1, "the second and third wheelhouse should come from the caches"
    assert first == again and [p.name for p in other.glob("*.whl")] == ["idna-3.20-py3-none-any.whl"]
    command = calls[0]
    assert "--only-binary=:all:" in command and command[command.index("--python-version") + 1] == "3.11"
    assert "manylinux2014_x86_64" in command


def test_prepare_wheelhouse_reports_pip_errors(monkeypatch, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("no-such-package==0\n")
    monkeypatch.setattr(
        docker_engine.subprocess, "run",
        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "No matching distribution"),
    )
    with pytest.raises(RuntimeError, match="No matching distribution"):
        docker_engine.prepare_wheelhouse(requirements, tmp_path / "w", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*")), "a failed download must not stay in the cache"


# What the legacy builder streams for a two-stage build, then for the same build from the
# cache: aaa/bbb are the first stage's steps, ccc the second's, 0123456789ab the base image.
_COLD_LOG = [
    {"stream": "Step 1/5 : ARG BASE_IMAGE"}, {"stream": "\n"},
    {"stream": "Step 2/5 : FROM ${BASE_IMAGE} AS first"}, {"stream": "\n"},
    {"stream": " ---> 0123456789ab\n"},
    {"stream": "Step 3/5 : RUN echo ' ---> not an id' > /built.txt"}, {"stream": "\n"},
    {"stream": " ---> Running in 6e6127677101\n"},
    {"stream": "Removing intermediate container 6e6127677101\n"},
    {"stream": " ---> aaaaaaaaaaaa\n"},
    {"stream": "Step 4/5 : ENV X=1"}, {"stream": "\n"}, {"stream": " ---> Running in 4ecdb9f3af83\n"},
    {"stream": "Removing intermediate container 4ecdb9f3af83\n"}, {"stream": " ---> bbbbbbbbbbbb\n"},
    {"aux": {"ID": "sha256:" + "b" * 64}},
    {"stream": "Step 5/5 : FROM first"}, {"stream": "\n"}, {"stream": " ---> bbbbbbbbbbbb\n"},
    {"stream": "Step 6/6 : COPY a /a"}, {"stream": "\n"}, {"stream": " ---> cccccccccccc\n"},
    {"stream": "Successfully built cccccccccccc\n"},
]
_CACHED_LOG = [
    {"stream": "Step 1/2 : FROM base"}, {"stream": "\n"}, {"stream": " ---> 0123456789ab\n"},
    {"stream": "Step 2/2 : RUN echo built"}, {"stream": "\n"}, {"stream": " ---> Using cache\n"},
    {"stream": " ---> dddddddddddd\n"}, {"stream": "Successfully built dddddddddddd\n"},
]


def test_images_created_are_the_committed_steps_not_cache_nor_from():
    assert docker_engine.images_created(_COLD_LOG) == {"aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"}, (
        "images_created should list the images of the steps the build ran, and neither the images "
        "FROM starts from nor those of later FROM <stage> steps: see _BuildLogReader._line"
    )
    assert docker_engine.images_created(_CACHED_LOG) == set(), (
        "an image the log says came from the cache may be another build's: images_created must "
        "leave it out (see the 'Using cache' branch of _BuildLogReader._line)"
    )


def test_images_created_reads_raw_json_chunks_split_anywhere():
    import json

    raw = "".join(json.dumps(message) + "\r\n" for message in _COLD_LOG).encode()
    chunks = [raw[i:i + 7] for i in range(0, len(raw), 7)]  # messages and UTF-8 cut anywhere
    assert docker_engine.images_created(chunks) == {"aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"}, (
        "with decode=False client.api.build streams raw JSON chunks: images_created must join them "
        "into messages (see _BuildLogReader.feed)"
    )


def test_record_builds_passes_the_stream_on_unchanged_and_stops():
    class FakeApi:
        def build(self, path=None, decode=False):
            """The SDK's docstring."""
            return iter(_COLD_LOG if decode else [f'{{"stream": "Step 1/1 : RUN x\\n ---> {path}\\n"}}'.encode()])

    class FakeClient:
        api = FakeApi()

    client = FakeClient()
    first = docker_engine.record_builds(client)
    assert list(client.api.build(path=".", decode=True)) == _COLD_LOG, \
        "record_builds must pass the build's messages on unchanged (see recorded_build)"
    second = docker_engine.record_builds(client)
    list(client.api.build(path="e" * 12))
    assert first == {"aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "eeeeeeeeeeee"}, \
        f"the first set should hold both builds' images, holds {first}: see recorded_build"
    assert second == {"eeeeeeeeeeee"}, \
        f"a set records only the builds that start after record_builds returned it, holds {second}"
    assert client.api.build.__doc__ == "The SDK's docstring.", \
        "help(client.api.build) must still show the SDK's docstring (see functools.wraps in record_builds)"
    docker_engine.stop_recording(client, first)
    list(client.api.build(path="f" * 12))
    assert "f" * 12 in second and "f" * 12 not in first, \
        "after stop_recording a set must not grow, and the others must (see stop_recording)"


# ---- on a real engine -----------------------------------------------------------------



@pytest.mark.docker
def test_local_base_image_has_python_311_and_useradd(docker_client, local_base_image, docker_labels):
    output = docker_client.containers.run(
        local_base_image, ["sh", "-c", "python3 --version && command -v useradd && python3 -m venv /tmp/v"],
        network_mode="host", labels=docker_labels, remove=True,
    ).decode()
    assert "Python 3.11" in output and "useradd" in output


@pytest.mark.docker
def test_build_run_and_remove_labelled(docker_client, local_base_image, docker_labels, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS first\nRUN echo built > /built.txt\n"
        "FROM ${BASE_IMAGE}\nCOPY --from=first /built.txt /built.txt\nCMD [\"cat\", \"/built.txt\"]\n"
    )
    built = docker_engine.record_builds(docker_client)
    tag = f"dlcloud-test/tiny:{docker_labels['dlcloud.test.run']}"
    image, _ = docker_client.images.build(
        path=str(tmp_path), tag=tag, buildargs={"BASE_IMAGE": docker_engine.base_image()},
        labels=docker_labels, network_mode="host", rm=True, forcerm=True,
    )
    container = docker_client.containers.run(image.id, detach=True, network_mode="host", labels=docker_labels)
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert container.logs().decode().strip() == "built"
    label = f"dlcloud.test.run={docker_labels['dlcloud.test.run']}"
    docker_engine.stop_recording(docker_client, built)
    removed = docker_engine.remove_labelled(docker_client, label, also_remove=built)
    assert removed["containers"] and removed["images"]
    assert not docker_client.containers.list(all=True, filters={"label": label})
    assert not docker_client.images.list(filters={"label": label})
    assert not docker_engine.image_exists(docker_client, tag)


def _stage_ends(client, context, tag, labels, marker):
    """Build a two-stage Dockerfile with ``client.api.build``; the ids that end each stage."""
    (context / "Dockerfile").write_text(
        f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}} AS first\nRUN echo {marker} > /built.txt\n"
        "FROM ${BASE_IMAGE}\nCOPY --from=first /built.txt /built.txt\n"
    )
    ends = []
    for message in client.api.build(
        path=str(context), tag=tag, buildargs={"BASE_IMAGE": docker_engine.base_image()}, labels=labels,
        network_mode="host", rm=True, forcerm=True, nocache=True, decode=True,
    ):
        assert "error" not in message, f"the test build of {tag} failed: {message['error']}"
        if "ID" in message.get("aux", {}):
            ends.append(message["aux"]["ID"])
    return ends


@pytest.mark.docker
def test_remove_labelled_removes_this_runs_stage_images_and_not_someone_elses(
    docker_client, local_base_image, docker_labels, tmp_path
):
    import uuid

    run = docker_labels["dlcloud.test.run"]
    label = f"dlcloud.test.run={run}"
    built = docker_engine.record_builds(docker_client)  # this run starts
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours = _stage_ends(docker_client, tmp_path / "ours", f"dlcloud-test/ours:{run}", docker_labels, run)
    # Someone else on the same engine (another student, a concurrent build): another client,
    # another label, a build that starts after this run did. Their first stage stays dangling.
    other_run = uuid.uuid4().hex[:12]
    other_labels = {"dlcloud.test": "1", "dlcloud.test.run": other_run}
    someone_else = docker_engine.connect()  # the same engine, not the recording client
    theirs = []
    try:
        theirs = _stage_ends(someone_else, tmp_path / "theirs", f"dlcloud-test/theirs:{other_run}",
                             other_labels, other_run)
        assert len(ours) == 2 and len(theirs) == 2, \
            f"each two-stage build should end two stages, got {ours} and {theirs}: see _stage_ends"
        dangling = {image.id for image in docker_client.images.list(filters={"dangling": True})}
        assert {ours[0], theirs[0]} <= dangling, (
            "the first stage of each build should be left untagged (dangling) by the legacy builder, "
            f"dangling: {dangling}; the test builds no longer show what remove_labelled is for"
        )
        assert ours[0][7:19] in built and theirs[0][7:19] not in built, (
            f"record_builds should hold this run's stage image {ours[0][7:19]} and not the other "
            f"client's {theirs[0][7:19]}, holds {built}: see record_builds and images_created"
        )
        docker_engine.stop_recording(docker_client, built)
        removed = docker_engine.remove_labelled(docker_client, label, also_remove=built)
        assert not docker_engine.image_exists(docker_client, ours[0]), (
            f"this run's dangling stage image {ours[0][7:19]} survived remove_labelled (removed: {removed}): "
            "see the also_remove pass of remove_labelled"
        )
        assert not docker_engine.image_exists(docker_client, ours[1]), "this run's labelled image survived"
        for image_id in theirs:
            assert docker_engine.image_exists(docker_client, image_id), (
                f"remove_labelled removed {image_id[7:19]}, an image someone else built after this run "
                f"started (removed: {removed}): it must remove only what it is given and labelled images"
            )
    finally:
        docker_engine.remove_labelled(someone_else, f"dlcloud.test.run={other_run}",
                                      also_remove=theirs[:1])
        someone_else.close()
    assert not docker_engine.image_exists(docker_client, theirs[0]), \
        "the other client's stage image should go when it is named in also_remove (see remove_labelled)"


@pytest.mark.docker
def test_real_wheelhouse_installs_offline_in_the_base_image(
    docker_client, local_base_image, docker_labels, tmp_path
):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("idna==3.20\n")
    try:
        docker_engine.prepare_wheelhouse(requirements, tmp_path / "wheelhouse")
    except RuntimeError as error:
        pytest.skip(f"PyPI is not reachable: {error}")
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY requirements.txt wheelhouse/ /w/\n"
        "RUN python3 -m venv /v && /v/bin/pip install --no-cache-dir --no-index --find-links /w"
        " -r /w/requirements.txt\n"
        "CMD [\"/v/bin/python\", \"-c\", \"import idna; print(idna.__version__)\"]\n"
    )
    image, _ = docker_client.images.build(
        path=str(tmp_path), tag=f"dlcloud-test/wheels:{docker_labels['dlcloud.test.run']}",
        buildargs={"BASE_IMAGE": docker_engine.base_image()}, labels=docker_labels,
        network_mode="host", rm=True, forcerm=True,
    )
    output = docker_client.containers.run(image.id, network_mode="host", labels=docker_labels, remove=True)
    assert output.decode().strip() == "3.20"


def test_module_imports_without_an_engine():
    # Importing must never need an engine: Binder users read the lab without one.
    result = subprocess.run(
        [sys.executable, "-c", "import dlcloud.docker_engine as d; print(d.base_image())"],
        capture_output=True, text=True, env={"DOCKER_HOST": "unix:///nonexistent.sock", "PATH": ""},
        check=False,
    )
    assert result.returncode == 0, result.stderr
