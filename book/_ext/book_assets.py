"""Small fixes to how the book is built: every inline script once, the diagram tool found.

Inline scripts
--------------

Sphinx 7.4 records an inline script (``app.add_js_file(None, body=...)``) twice when an
extension adds it after the HTML builder has started: once on the builder, named ``None``,
and again when it copies the registry before writing, named ``''``; the two names differ,
so its de-duplication keeps both. sphinx-thebe (which Jupyter Book always loads for its
launch buttons) adds ``const THEBE_JS_URL = ...`` that way, and a ``const`` declared twice
is a SyntaxError in every page's console. sphinx-togglebutton's ``var`` is doubled too.

The fix: once the extensions have added their scripts, drop the builder's ``None`` copies;
the builder adds the registry's copy of each before it writes the first page.

The diagram tool
----------------
``graphviz_dot`` names ``graphviz-pure``, a console script of the lock's wheel. ``make``
puts the venv's bin on PATH; someone who runs ``.venv/bin/jupyter-book`` directly has not,
so look for it beside the interpreter that runs the build too.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config


def find_graphviz_beside_python(_app: Sphinx, config: Config) -> None:
    command = getattr(config, "graphviz_dot", "")
    beside = Path(sys.executable).parent / command
    if command and shutil.which(command) is None and beside.exists():
        config.graphviz_dot = str(beside)


def drop_early_inline_scripts(app: Sphinx, *_args) -> None:
    scripts = getattr(app.builder, "_js_files", None)
    if scripts is None:
        return
    registered = {attrs.get("body") for name, attrs in app.registry.js_files if name is None}
    scripts[:] = [s for s in scripts if not (s.filename is None and s.attributes.get("body") in registered)]


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", find_graphviz_beside_python)
    # After sphinx-thebe (env-before-read-docs) and sphinx-togglebutton (builder-inited).
    app.connect("env-before-read-docs", drop_early_inline_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
