"""Load every inline script of the book once.

Sphinx 7.4 records an inline script (``app.add_js_file(None, body=...)``) twice when an
extension adds it after the HTML builder has started: once on the builder, named ``None``,
and again when it copies the registry before writing, named ``''``; the two names differ,
so its de-duplication keeps both. sphinx-thebe (which Jupyter Book always loads for its
launch buttons) adds ``const THEBE_JS_URL = ...`` that way, and a ``const`` declared twice
is a SyntaxError in every page's console. sphinx-togglebutton's ``var`` is doubled too.

The fix: once the extensions have added their scripts, drop the builder's ``None`` copies;
the builder adds the registry's copy of each before it writes the first page.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def drop_early_inline_scripts(app: Sphinx, *_args) -> None:
    scripts = getattr(app.builder, "_js_files", None)
    if scripts is None:
        return
    registered = {attrs.get("body") for name, attrs in app.registry.js_files if name is None}
    scripts[:] = [s for s in scripts if not (s.filename is None and s.attributes.get("body") in registered)]


def setup(app: Sphinx) -> dict:
    # After sphinx-thebe (env-before-read-docs) and sphinx-togglebutton (builder-inited).
    app.connect("env-before-read-docs", drop_early_inline_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
