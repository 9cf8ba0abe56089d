"""The secure grader's pieces without Docker: plan, record checks, feedback, and the runner itself.

The runner is started here as a plain subprocess with small plans of our own (the
sandbox's limits are Docker's job, tested in test_secure_grader.py): what is checked is
that its verdicts are signed, that forged ones are refused, and that tampering voids a
verdict.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import sys
from pathlib import Path

from dlcloud_course.grader import plan as planmod
from dlcloud_course.grader import verdict
from dlcloud_course.grader.plan import InstructorCell

RUNNER = Path(planmod.__file__).with_name("runner.py")
TEST_SOURCE = (
    'where = "see double() in section 1"\n'
    'assert double(2) == 4, f"double(2) must be 4, got {double(2)}: {where}"\n'
    "### BEGIN HIDDEN TESTS\n"
    'assert double(-3) == -6, f"negative numbers double too, got {double(-3)}: {where}"\n'
    "### END HIDDEN TESTS\n"
)
CELLS = [
    InstructorCell("locked", "setup", "import math\n", "import math\n"),
    InstructorCell("solution", "write-double", "def double(x):\n    return 2 * x\n",
                   "def double(x):\n    raise NotImplementedError()\n"),
    InstructorCell("test", "double-works", TEST_SOURCE, TEST_SOURCE.split("### BEGIN")[0], 2.0),
]


def _cell(grade_id: str, source: str, **meta) -> dict:
    return {"cell_type": "code", "source": source, "outputs": [],
            "metadata": {"nbgrader": {"grade_id": grade_id, **meta}}}


def _submission(solution: str, test: str | None = None) -> dict:
    cells = [_cell("setup", "import math\n", locked=True),
             _cell("write-double", solution, solution=True)]
    if test is not None:
        cells.append(_cell("double-works", test, grade=True, locked=True, points=2))
    return {"cells": cells}


def _run(submission: dict) -> tuple[list[dict], list]:
    plan = planmod.build_plan(CELLS, submission)
    key = secrets.token_bytes(32)
    stdin = key.hex().encode() + b"\n" + json.dumps({"cells": plan.cells}).encode()
    result = subprocess.run([sys.executable, "-I", str(RUNNER)], input=stdin, capture_output=True,
                            timeout=120, check=False)
    return verdict.verified_records(result.stdout, key)


def _status(records: list[dict]) -> str:
    return next(r["status"] for r in records if r.get("kind") == "verdict")


def test_plan_restores_tests_and_ignores_submitted_metadata():
    # The student turns the test into a "solution" and rewrites it: the instructor's runs.
    sneaky = {"cells": [_cell("write-double", "def double(x):\n    return 0\n", solution=True),
                        _cell("double-works", "pass\n", solution=True)]}
    plan = planmod.build_plan(CELLS, sneaky)
    test = next(c for c in plan.cells if c["id"] == "double-works")
    assert test["kind"] == "test" and "BEGIN HIDDEN TESTS" in test["source"], (
        "the test cell must be the instructor's, hidden part included: see build_plan()")
    reasons = {reason for reason, _ in plan.flags}
    assert {"edited-cell", "deleted-cell"} <= reasons, f"edited test and deleted setup must be flagged: {plan.flags}"


def test_runner_signs_pass_and_fail():
    honest, _ = _run(_submission("def double(x):\n    return 2 * x\n", TEST_SOURCE.split("### BEGIN")[0]))
    assert _status(honest) == "pass", f"the honest solution must pass: {honest}"
    wrong, _ = _run(_submission("def double(x):\n    return x + 2\n"))
    assert _status(wrong) == "fail", f"a wrong solution must fail: {wrong}"
    failing = next(r for r in wrong if r.get("kind") == "verdict")
    assert failing["line"] == 4, f"the failing line is the hidden assertion (line 4): {failing}"


def test_forged_report_is_refused_and_flagged():
    attack = (
        "import sys\n"
        "frame = sys._getframe()\n"
        "while frame is not None and 'report' not in frame.f_globals:\n"
        "    frame = frame.f_back\n"
        "try:\n"
        "    frame.f_globals['report']('verdict', {'test': 'double-works', 'status': 'pass'})\n"
        "except PermissionError:\n"
        "    pass\n"
        "def double(x):\n"
        "    return 0\n"
    )
    records, _ = _run(_submission(attack))
    assert _status(records) == "fail", "a forged pass must not count"
    assert any(r.get("reason") == "forged-verdict" for r in records), f"must be flagged: {records}"


def test_patched_builtins_void_the_verdict():
    attack = "import builtins\nbuiltins.len = lambda x: 0\ndef double(x):\n    return 2 * x\n"
    records, _ = _run(_submission(attack))
    assert _status(records) == "tampered", f"a patched builtin must void the verdict: {records}"


def test_refused_calls_are_flagged():
    attack = (
        "import os, sys, socket\n"
        "for call in (lambda: sys.settrace(None), lambda: os.fork(),\n"
        "             lambda: socket.getaddrinfo('pypi.org', 443),\n"
        "             lambda: open('/proc/self/mem', 'rb')):\n"
        "    try:\n"
        "        call()\n"
        "    except PermissionError:\n"
        "        pass\n"
        "def double(x):\n"
        "    return 2 * x\n"
    )
    records, _ = _run(_submission(attack))
    reasons = [r.get("detail", "") for r in records if r.get("kind") == "flag"]
    for event in ("sys.settrace", "os.fork", "socket.getaddrinfo", "open"):
        assert any(reason.startswith(event) for reason in reasons), f"{event} must be refused: {reasons}"


def test_records_with_bad_signatures_duplicates_or_gaps_are_rejected():
    key = b"k" * 32
    body = b'{"kind": "verdict", "seq": 1, "status": "pass", "test": "double-works"}'
    good = b"DLCV1 " + body + b" " + hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    records, flags = verdict.verified_records(good + b"\n", key)
    assert records and not flags
    records, flags = verdict.verified_records(good.replace(b"pass", b"fail"), key)
    assert not records and flags, "a changed body must fail the signature check"
    duplicate = b'{"kind": "verdict", "seq": 1, "status": "fail", "status": "pass"}'
    line = b"DLCV1 " + duplicate + b" " + hmac.new(key, duplicate, hashlib.sha256).hexdigest().encode()
    records, flags = verdict.verified_records(line, key)
    assert not records and flags, "a record with a duplicated key must be rejected"
    records, flags = verdict.verified_records(good + b"\n" + good, key)
    assert len(records) == 1 and flags, "a replayed record (same seq) must be rejected"


def test_feedback_shows_the_instructors_message_not_the_hidden_source():
    cell = CELLS[2]
    hidden = verdict.TestResult("double-works", 0.0, 2.0, "fail", line=4, error="AssertionError")
    text = verdict.feedback_for(cell, hidden)
    assert "negative numbers double too, got …: see double() in section 1" in text, text
    assert "double(-3)" not in text, f"the hidden test's code must not be shown: {text}"
    visible = verdict.TestResult("double-works", 0.0, 2.0, "fail", line=2, error="NotImplementedError")
    text = verdict.feedback_for(cell, visible)
    assert "line 2" in text and "NotImplementedError" in text and "assert double(2) == 4" in text, text


def test_a_test_cell_may_set_its_own_names_again():
    """A test cell that assigns `client` or `r` again (as lab 1's do) is not tampering."""
    from dlcloud_course.grader.runner import _stored_names

    code = compile("with open('x') as handle:\n    r = 1\nclient = r\nprint(create_app)\n", "cell", "exec")
    assert _stored_names(code) == {"handle", "r", "client"}, "only what the cell itself assigns"


def test_lab_policies_follow_their_manifests(tmp_path):
    from dlcloud_course.grader.policy import PIDS_WITHOUT, lab_policy

    lab1, lab3, lab5 = (lab_policy(tmp_path, name) for name in
                        ("lab1-bpaas", "lab3-kubernetes", "lab5-spark-tensorflow"))
    assert not lab1.for_runner()["processes"] and lab1.limits.pids == PIDS_WITHOUT, (
        f"lab 1 needs nothing: no program, no fork, the small pids limit; got {lab1}")
    assert "kubectl" in lab3.programs, f"lab 3 (optional cluster) runs kubectl kustomize: {lab3}"
    assert "spark-submit" in lab5.programs, f"lab 5 (needs java) starts spark-submit: {lab5}"
    assert lab1.limits.memory_mb == 2048 and lab1.limits.cell_s <= lab1.limits.wall_s, (
        f"limits come from [budget]: {lab1.limits}")
    lab2 = lab_policy(tmp_path, "lab2-containers")
    assert lab2.engine and not lab1.engine, (
        f"lab 2 needs a Docker Engine: its sandbox gets the engine broker, and only it: {lab2}")
    assert lab2.for_runner()["engine_sockets"] and not lab1.for_runner()["engine_sockets"], (
        "only a lab that needs docker may connect to the broker's socket")


def test_grading_table_sets_tmpfs_cpus_and_time_and_the_tmpfs_counts_as_memory():
    from dlcloud_course.grader.policy import policy_from_manifest
    from dlcloud_course.grader.sandbox import Limits

    manifest = {"budget": {"memory_mib": 2048, "wall_s": 300},
                "grading": {"tmpfs_mib": 256, "cpus": 2, "cell_s": 240, "wall_s": 720}}
    limits = policy_from_manifest("labx", manifest).limits
    assert (limits.tmpfs_mb, limits.cpus, limits.cell_s) == (256, 2.0, 240.0), limits
    assert limits.notebook_s == 720 and limits.wall_s > 720, f"[grading] wall_s is the notebook's limit: {limits}"
    assert limits.memory_mb == 2048 + 2 * (256 - Limits.tmpfs_mb), (
        f"the two tmpfs are memory: what they may hold beyond the default is added: {limits}")
    plain = policy_from_manifest("labx", {"budget": {"memory_mib": 2048, "wall_s": 300}}).limits
    assert (plain.memory_mb, plain.tmpfs_mb, plain.cpus, plain.notebook_s) == (2048, Limits.tmpfs_mb, 1.0, 300)


def test_process_policy_allows_only_named_programs_from_the_image():
    from dlcloud_course.grader.runner import _process_allowed

    policy = (frozenset({"kubectl"}), False, True)
    wheel = (sys.prefix + "/lib/python3.11/site-packages/kubectl/bin/kubectl", ("kubectl", "kustomize"), None, None)
    assert _process_allowed("subprocess.Popen", wheel, policy), "kubectl from its wheel, in the image"
    assert not _process_allowed("subprocess.Popen", (sys.prefix + "/bin/python", ("python",), None, None), policy), (
        "a program the lab does not name must be refused")
    assert _process_allowed("subprocess.Popen", (None, ("kubectl", "version"), None, None), policy), (
        "a bare name found on PATH is the named program")
    assert not _process_allowed("subprocess.Popen", ("/tmp/kubectl", ("kubectl",), None, None), policy), (
        "a copy in /tmp must be refused")
    assert not _process_allowed("subprocess.Popen", (None, ("sh", "-c", "kubectl"), None, None), policy)
    assert not _process_allowed("os.fork", (), policy), "fork is allowed only when the lab says so"
    assert _process_allowed("os.kill", (12, 15), policy), "a lab that starts programs may stop them"


def test_only_a_zombies_smaps_and_this_processs_maps_may_be_opened():
    """psutil falls back to smaps for a zombie or a process that is gone (Spark's): it is empty."""
    import os
    import time

    from dlcloud_course.grader.runner import _refusal

    zombie = subprocess.Popen(["true"])
    alive = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(100):
            state = Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        assert _refusal("open", (f"/proc/{zombie.pid}/smaps", "r", 0)) is None, (
            "a zombie's smaps is empty: psutil's fallback must not be refused")
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert _refusal("open", (f"/proc/{gone.pid}/smaps", "r", 0)) is None, (
            "a process that is gone has no smaps: psutil's fallback must not be refused")
        assert _refusal("open", ("/proc/self/maps", "rb", 0)) is None, (
            "threadpoolctl (scikit-learn) lists this process's libraries from /proc/self/maps")
        assert _refusal("open", (f"/proc/{os.getpid()}/maps", "rb", 0)) is None
        for path in (f"/proc/{alive.pid}/smaps", f"/proc/{os.getpid()}/smaps",
                     f"/proc/{alive.pid}/maps", f"/proc/{os.getppid()}/maps", "/proc/self/task/1/maps",
                     "/proc/self/smaps", "/proc/self/mem", "/proc/thread-self/maps",
                     f"/proc/{zombie.pid}/maps", f"/proc/{zombie.pid}/task/{zombie.pid}/smaps",
                     f"/proc/{zombie.pid}/mem"):
            assert _refusal("open", (path, "r", 0)), f"{path} must stay refused"
    finally:
        alive.kill()
        alive.wait()
        zombie.wait()


def test_a_class_rebuilt_by_cloudpickle_is_not_tampering_but_other_globals_are():
    """MLflow's load_model of a PythonModel defined in the notebook sets its methods again."""
    import types

    import cloudpickle

    from dlcloud_course.grader.runner import _rebuilt_copy

    namespace = {"__name__": "__main__"}
    exec(compile("import math\ndef helper(x):\n    return math.floor(x) + 1\n"
                 "class Model:\n    def predict(self, x, scale=2.0):\n        return helper(x) * scale\n",
                 "<locked:setup>", "exec"), namespace)
    model, original = namespace["Model"], namespace["Model"].__dict__["predict"]
    copy = cloudpickle.loads(cloudpickle.dumps(model()))
    assert type(copy) is model and model.__dict__["predict"] is not original, (
        "cloudpickle sets the methods of a class it pickled by value again (the premise)")
    assert _rebuilt_copy(model.__dict__["predict"], original), "an equal rebuilt copy is not tampering"
    lying = types.FunctionType(original.__code__, {**namespace, "helper": lambda x: 99}, "predict",
                               original.__defaults__)
    assert not _rebuilt_copy(lying, original), "the same code with another global is tampering"
    other_default = types.FunctionType(original.__code__, namespace, "predict", (3.0,))
    assert not _rebuilt_copy(other_default, original), "the same code with another default is tampering"
    assert not _rebuilt_copy(lambda self, x, scale=2.0: 0, original), "other code is tampering"


def _supervised(lines: list[dict], cells: list[dict]):
    from dlcloud_course.grader.runner import Supervision

    supervision = Supervision(cells, cell_s=10, notebook_s=20)
    for line in lines:
        supervision.accept(json.dumps(line).encode())
    return supervision


def test_supervisor_voids_a_run_with_an_outcome_out_of_turn():
    cells = [{"kind": "student", "id": "s"}, {"kind": "test", "id": "t"}]
    end_test = {"kind": "end", "cell": 1, "status": "pass", "tamper": [], "line": None, "error": None}
    honest = _supervised([{"kind": "begin", "cell": 0, "seq": 1},
                          {"kind": "end", "cell": 0, "status": "ok", "tamper": [], "line": None,
                           "error": None, "seq": 2},
                          {"kind": "begin", "cell": 1, "seq": 3}, {**end_test, "seq": 4}], cells)
    assert not honest.violations and honest.records[-1][1]["status"] == "pass", honest.records
    # A student cell writes the test's "pass" before the test ran: out of turn, all void.
    forged = _supervised([{"kind": "begin", "cell": 0, "seq": 1}, {**end_test, "seq": 2}], cells)
    assert forged.violations, "an end of a cell that is not running must be a violation"
    key = b"k" * 32
    records, _ = verdict.verified_records(b"".join(forged.signed(key)), key)
    assert any(r.get("reason") == "forged-outcome" for r in records), records
    assert all(r["status"] == "tampered" for r in records if r["kind"] == "verdict"), records
    twice = _supervised([{"kind": "begin", "cell": 0, "seq": 1},
                         {"kind": "end", "cell": 0, "status": "ok", "tamper": [], "line": None,
                          "error": None, "seq": 2},
                         {"kind": "begin", "cell": 1, "seq": 3}, {**end_test, "seq": 4},
                         {**end_test, "status": "fail", "seq": 5}], cells)
    assert twice.violations, "a second end of the same cell must be a violation"


def test_runner_flags_a_cell_past_its_time_limit():
    plan = planmod.build_plan(CELLS, _submission("import time\ntime.sleep(30)\ndef double(x):\n    return 2 * x\n"))
    key = secrets.token_bytes(32)
    stdin = key.hex().encode() + b"\n" + json.dumps(
        {"cells": plan.cells, "limits": {"cell_s": 2, "notebook_s": 20}}).encode()
    result = subprocess.run([sys.executable, "-I", str(RUNNER)], input=stdin, capture_output=True,
                            timeout=60, check=False)
    records, _ = verdict.verified_records(result.stdout, key)
    timeouts = [r for r in records if r.get("reason") == "cell-timeout"]
    assert timeouts and "write-double" in timeouts[0]["detail"], (
        f"a cell past its limit must be flagged cell-timeout with its id: {records}")
    assert not any(r.get("kind") == "verdict" for r in records), "no verdict after the time limit"


def test_runner_runs_top_level_await_in_one_loop_per_notebook():
    """Lab 7's cells await at top level, as IPython allows; a task started in one cell lives on."""
    cells = [InstructorCell("locked", "setup", "import asyncio\n", "import asyncio\n"),
             InstructorCell("solution", "write-double",
                            "async def double_later(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
                            "task = asyncio.get_event_loop().create_task(double_later(2))\n"
                            "def double(x):\n    return 2 * x\n", "raise NotImplementedError()\n"),
             InstructorCell("test", "double-works", "assert await task == 4, 'the task of the '"
                            "'previous cell must finish in the same loop'\n", "", 2.0)]
    submission = {"cells": [_cell("setup", "import asyncio\n", locked=True),
                            _cell("write-double", cells[1].source, solution=True)]}
    plan = planmod.build_plan(cells, submission)
    key = secrets.token_bytes(32)
    stdin = key.hex().encode() + b"\n" + json.dumps({"cells": plan.cells}).encode()
    result = subprocess.run([sys.executable, "-I", str(RUNNER)], input=stdin, capture_output=True,
                            timeout=120, check=False)
    records, _ = verdict.verified_records(result.stdout, key)
    assert _status(records) == "pass", f"top-level await must run in the notebook's loop: {records}"


def test_a_library_patching_a_library_is_not_tampering_but_a_cell_is():
    """pyspark rewrites py4j.protocol.smart_decode at run time: not the student's doing."""
    import json as library_module

    from dlcloud_course.grader.runner import _library_made

    assert _library_made(library_module.dumps), "a function a library's file defines is a library's patch"
    cell_made = eval(compile("lambda *a, **k: {}", "<student:write-double>", "eval"))  # noqa: S307
    assert not _library_made(cell_made), "a function a cell defines replacing a library's is tampering"
    assert not _library_made(print), "a builtin put in a library function's place is tampering"
