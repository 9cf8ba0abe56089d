"""Pytest fixtures for tests and labs that need a Docker Engine.

Registered in tests/conftest.py with ``pytest_plugins = ["docker_support"]``.

- ``docker_client`` (session): a client for the engine at ``DOCKER_HOST`` or the default
  socket, starting ``dockerd`` first where that is possible (root and the binary).
  Without an engine the test is skipped with the reason, or fails when ``CI=true``:
  in CI a missing engine is a broken runner, not a reason to pass.
- ``local_base_image`` (session): builds (once per machine, cached by tag) the Debian +
  Python 3.11 base image with debootstrap and exports ``DLCLOUD_BASE_IMAGE`` for the
  rest of the session, so that labs build without any registry.
- ``docker_labels`` (function): labels to put on every container and image a test
  creates; whatever carries them is removed after the test, even when it fails, and so
  are the untagged stage images that the test's builds through ``docker_client`` made.
  Everything labelled with this session's ``dlcloud.test.session`` (:data:`SESSION_LABELS`)
  is removed again at the end of the session, and nothing else: other test sessions may
  share the engine, and a sweep of every ``dlcloud.test=1`` object once removed another
  session's running JupyterLab container in the middle of its tests.
"""

from __future__ import annotations

import os
import uuid

import pytest

TEST_LABEL = "dlcloud.test"
#: Labels that tie an object to this test session: put them on anything a test creates.
SESSION_LABELS = {TEST_LABEL: "1", f"{TEST_LABEL}.session": uuid.uuid4().hex[:12]}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"CI=true but no Docker Engine is usable: {reason}", pytrace=False)
    pytest.skip(f"needs a Docker Engine: {reason}")


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker  # noqa: F401

        from dlcloud.docker_engine import DockerUnavailable, remove_labelled
        from dlcloud_course.docker_host import start_dockerd
    except ImportError as error:  # the docker SDK is missing from the environment
        _unavailable(f"the Python package is missing ({error})")
    try:
        client = start_dockerd()
    except DockerUnavailable as error:
        _unavailable(str(error))
    yield client
    # Only what this session labelled: other sessions may share this engine.
    remove_labelled(client, f"{TEST_LABEL}.session={SESSION_LABELS[TEST_LABEL + '.session']}")
    client.close()


@pytest.fixture(scope="session")
def local_base_image(docker_client) -> str:
    from dlcloud.docker_engine import DockerUnavailable, build_local_base_image

    try:
        tag = build_local_base_image(client=docker_client)
    except DockerUnavailable as error:
        _unavailable(str(error))
    previous = os.environ.get("DLCLOUD_BASE_IMAGE")
    os.environ["DLCLOUD_BASE_IMAGE"] = tag
    yield tag
    if previous is None:
        os.environ.pop("DLCLOUD_BASE_IMAGE", None)
    else:
        os.environ["DLCLOUD_BASE_IMAGE"] = previous


@pytest.fixture
def docker_labels(docker_client) -> dict[str, str]:
    from dlcloud.docker_engine import record_builds, remove_labelled, stop_recording

    run = uuid.uuid4().hex[:12]
    built = record_builds(docker_client)  # the untagged stage images of this test's builds
    yield {**SESSION_LABELS, f"{TEST_LABEL}.run": run}
    stop_recording(docker_client, built)
    remove_labelled(docker_client, f"{TEST_LABEL}.run={run}", also_remove=built)
