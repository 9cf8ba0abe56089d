"""``python -m dlcloud_course COMMAND``: the course's tooling from the command line.

- ``labs [--check] [LAB ...]``: render the lab sources and regenerate ``labs/`` (``make labs``);
  with ``--check``, only say what in ``labs/`` is out of date.
- ``render LAB [--out DIR]``: write one lab's rendered notebook and files (default ``build/source``).
- ``format LAB ...``: rewrite lab sources with jupytext's spacing (what the round-trip test wants).
- ``list``: every lab with what it needs and its budget.
- ``apidoc [--check]``: write the book's API page of ``dlcloud`` (``book/api.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _render(argv: list[str]) -> int:
    from dlcloud_course.generate import SOURCE_DIR, render_lab
    from dlcloud_course.labs import REPO, find

    parser = argparse.ArgumentParser(prog="python -m dlcloud_course render")
    parser.add_argument("lab")
    parser.add_argument("--out", type=Path, default=REPO / SOURCE_DIR)
    args = parser.parse_args(argv)
    print(render_lab(find(args.lab), args.out))
    return 0


def _format(argv: list[str]) -> int:
    from dlcloud_course.labs import find
    from dlcloud_course.render import notebook_text, render_notebook

    for name in argv:
        source = find(name).source
        text = source.read_text(encoding="utf-8")
        formatted = notebook_text(render_notebook(text, where=str(source)))
        if formatted != text:
            source.write_text(formatted, encoding="utf-8")
            print(f"reformatted {source}")
    return 0


def _list(argv: list[str]) -> int:
    from dlcloud_course.labs import discover

    for lab in discover():
        needs = ", ".join(sorted(lab.needs)) or "-"
        print(f"{lab.name:28} needs {needs:16} budget {lab.memory_mib} MiB, {lab.wall_s} s   {lab.title}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "labs":
        from dlcloud_course.generate import main as labs_main

        return labs_main(rest)
    if command == "render":
        return _render(rest)
    if command == "format":
        return _format(rest)
    if command == "list":
        return _list(rest)
    if command == "apidoc":
        from dlcloud_course.apidoc import main as apidoc_main

        return apidoc_main(rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
