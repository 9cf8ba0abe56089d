"""Lab 2's secret finder on real image archives of both layouts.

Debian's Docker Engine (20.10) writes ``docker save`` archives in the legacy layout
(``<id>/layer.tar``); Docker Engine 25 and later, and every registry, use the OCI image
layout (``index.json``, ``blobs/sha256/...``). The reference solution of lab 2 must find
a planted secret in both: the legacy archive comes from the engine, the OCI one from
Debian's ``skopeo``, which converts the engine's image offline.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from labtools import source_notebook

pytestmark = pytest.mark.docker

SOLUTION_CELL = "find-secrets-in-layers"
SECRET = re.compile(rb"dlc_live_[0-9a-f]{32}")


@pytest.fixture(scope="module")
def finder():
    """The solution's find_secrets_in_archive, run from the lab's own source."""
    cell = next(c for c in source_notebook("lab2-containers").cells if c.id == SOLUTION_CELL)
    namespace = {"json": __import__("json"), "tarfile": tarfile, "tempfile": tempfile, "Path": Path,
                 "SECRET_PATTERN": SECRET, "WORK": Path(tempfile.gettempdir())}
    exec(compile(cell.source, f"lab2-containers:{SOLUTION_CELL}", "exec"), namespace)
    return namespace["find_secrets_in_archive"]


@pytest.fixture
def image_with_secret(docker_client, docker_labels):
    """A one-layer image (docker import, no base image) holding a fake secret in /deploy.env."""
    secret = f"dlc_live_{secrets.token_hex(16)}"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = f"DEPLOY_KEY={secret}\n".encode()
        info = tarfile.TarInfo("deploy.env")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tag = f"dlcloud-test/archive-layouts:{docker_labels['dlcloud.test.run']}"
    repository, version = tag.split(":")
    docker_client.api.import_image_from_data(
        layer.getvalue(), repository=repository, tag=version,
        changes=[f"LABEL {key}={value}" for key, value in docker_labels.items()],
    )
    return tag, secret


def test_finds_the_secret_in_a_docker_save_archive(finder, docker_client, image_with_secret, tmp_path):
    tag, secret = image_with_secret
    archive = tmp_path / "saved.tar"
    with archive.open("wb") as out:
        for chunk in docker_client.images.get(tag).save(named=False):
            out.write(chunk)
    with archive.open("rb") as fileobj:
        found = finder(fileobj, SECRET)
    assert [f["secret"] for f in found] == [secret], f"the legacy docker save archive gave {found}"
    assert found[0]["location"].endswith("/deploy.env")


def test_finds_the_secret_in_an_oci_archive_made_by_skopeo(finder, image_with_secret, tmp_path):
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("needs skopeo (Debian's `skopeo` package) to write an OCI archive")
    tag, secret = image_with_secret
    archive = tmp_path / "oci.tar"
    subprocess.run([skopeo, "copy", "--quiet", f"docker-daemon:{tag}", f"oci-archive:{archive}"],
                   check=True, capture_output=True, timeout=120)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "index.json" in names and "manifest.json" not in names, f"skopeo wrote {names[:5]}"
    with archive.open("rb") as fileobj:
        found = finder(fileobj, SECRET)
    assert [f["secret"] for f in found] == [secret], (
        f"lab 2's find_secrets_in_archive found {found} in an OCI archive: it must follow index.json"
    )
    assert found[0]["location"].startswith("blobs/sha256/")
