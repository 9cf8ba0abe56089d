"""Pruning old grading images: the newest N of the grader's own tags stay, nothing else is touched.

Uses its own repository name (``dlcloud-prune-test/grader``) so that the grading images
other sessions are using on a shared engine are never candidates.
"""

from __future__ import annotations

import io
import time

import pytest

pytestmark = [pytest.mark.docker]
REPOSITORY = "dlcloud-prune-test/grader"
OTHER_NAME = "dlcloud-prune-test/other:kept"


def _tiny_image(client, base: str, tag: str, marker: int) -> str:
    from dlcloud_course.grader.image import GRADER_LABEL

    dockerfile = f"FROM {base}\nLABEL {GRADER_LABEL}=image dlcloud.prune-test.marker={marker}\n"
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                                   network_mode="none")
    return image.id


def test_prune_keeps_the_newest_and_never_other_names(docker_client, local_base_image):
    from dlcloud_course.grader.image import prune_grading_images

    tags = [f"{REPOSITORY}:{number:012x}" for number in range(1, 5)]
    try:
        for marker, tag in enumerate(tags):
            _tiny_image(docker_client, local_base_image, tag, marker)
            time.sleep(1.1)  # Created has one-second steps in some engines' listings
        docker_client.images.get(tags[0]).tag(OTHER_NAME)
        not_a_digest = f"{REPOSITORY}:latest"
        docker_client.images.get(tags[1]).tag(not_a_digest)
        removed = prune_grading_images(docker_client, keep=2, repository=REPOSITORY)
        assert sorted(removed) == sorted(tags[:2]), (
            f"the two oldest digest tags must go, the two newest stay: removed {removed}")
        left = {tag for image in docker_client.images.list(name=REPOSITORY) for tag in image.tags}
        assert set(tags[2:]) <= left and not_a_digest in left, (
            f"newest tags and tags not of the <digest> form must stay: {sorted(left)}")
        assert docker_client.images.get(OTHER_NAME), "an image's other name must survive pruning"
    finally:
        for tag in [*tags, OTHER_NAME, f"{REPOSITORY}:latest"]:
            try:
                docker_client.images.remove(tag)
            except Exception:  # noqa: BLE001 -- already gone is the goal
                pass
