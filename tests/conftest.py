"""Shared test fixtures. Lab fixtures that need Docker live in docker_support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

# Docker Engine fixtures: docker_client, local_base_image, docker_labels.
pytest_plugins = ["docker_support"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
