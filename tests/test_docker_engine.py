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
    import time

    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS first\nRUN echo built > /built.txt\n"
        "FROM ${BASE_IMAGE}\nCOPY --from=first /built.txt /built.txt\nCMD [\"cat\", \"/built.txt\"]\n"
    )
    started = time.time()
    tag = f"dlcloud-test/tiny:{docker_labels['dlcloud.test.run']}"
    image, _ = docker_client.images.build(
        path=str(tmp_path), tag=tag, buildargs={"BASE_IMAGE": docker_engine.base_image()},
        labels=docker_labels, network_mode="host", rm=True, forcerm=True,
    )
    container = docker_client.containers.run(image.id, detach=True, network_mode="host", labels=docker_labels)
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert container.logs().decode().strip() == "built"
    label = f"dlcloud.test.run={docker_labels['dlcloud.test.run']}"
    removed = docker_engine.remove_labelled(docker_client, label, dangling_since=started)
    assert removed["containers"] and removed["images"]
    assert not docker_client.containers.list(all=True, filters={"label": label})
    assert not docker_client.images.list(filters={"label": label})
    assert not docker_engine.image_exists(docker_client, tag)


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
