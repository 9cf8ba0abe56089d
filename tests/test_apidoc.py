"""The book's API page is the student runtime's API: generated from dlcloud, kept in sync."""

from __future__ import annotations

import importlib

from dlcloud_course.apidoc import API_PAGE, MODULES, api_page


def test_api_page_is_in_sync():
    assert API_PAGE.read_text(encoding="utf-8") == api_page(), (
        "book/api.md is stale: run `python -m dlcloud_course apidoc` and commit"
    )


def test_every_public_name_is_documented_and_exists():
    for short in MODULES:
        module = importlib.import_module(f"dlcloud.{short}")
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"dlcloud.{short}.__all__ names {missing}, which do not exist"
        assert f"## `dlcloud.{short}`" in API_PAGE.read_text(encoding="utf-8")


def test_the_runtime_has_no_course_tooling():
    import dlcloud

    package = dlcloud.__path__[0]
    from pathlib import Path

    modules = {p.stem for p in Path(package).glob("*.py")} - {"__init__"}
    assert modules == set(MODULES), (
        f"src/dlcloud/ holds {sorted(modules)}; the student runtime is {sorted(MODULES)} "
        "(course tooling goes to dlcloud_course; a new student module goes to apidoc.MODULES)"
    )
