"""From the sandbox's bytes to scores, flags and feedback: the checker that never runs student code.

Only lines of the form ``DLCV1 <json> <hmac>`` count, and only when the HMAC matches
the key made for this submission and the sequence numbers follow each other; anything
else the sandbox wrote is ignored (and a bad signature is a flag). A test scores its
points when its verdict is ``pass`` and nothing else: there is no partial credit and no
output is ever read. Feedback is built here from the instructor's test source only:
the message of the assertion on the failing line, with the literal parts of its
f-string and the values of ``where = "..."`` style constants of the same cell.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
from dataclasses import dataclass, field

from .plan import HIDDEN_BEGIN, HIDDEN_END, InstructorCell

RECORD_PREFIX = "DLCV1"
MAX_RECORD_BYTES = 4096
MAX_FEEDBACK_CHARS = 600
VALID_STATUSES = {"pass", "fail", "tampered"}


@dataclass
class TestResult:
    grade_id: str
    points: float
    max_points: float
    status: str  # pass, fail, tampered, missing
    line: int | None = None
    error: str | None = None
    tamper: list[str] = field(default_factory=list)
    feedback: str = ""


def verified_records(output: bytes, key: bytes) -> tuple[list[dict], list[tuple[str, str]]]:
    """The records signed with ``key``, in sequence; flags for anything forged."""
    records, flags = [], []
    expected_seq = 1
    for raw in output.split(b"\n"):
        if not raw.startswith(RECORD_PREFIX.encode() + b" "):
            continue
        if len(raw) > MAX_RECORD_BYTES:
            flags.append(("forged-record", "a record longer than any the runner writes"))
            continue
        body, _, mac = raw[len(RECORD_PREFIX) + 1:].rpartition(b" ")
        good = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(good, mac):
            flags.append(("forged-record", "a record whose signature does not match"))
            continue
        try:
            record = json.loads(body, object_pairs_hook=_no_duplicate_keys)
        except ValueError:
            flags.append(("forged-record", "a signed record that is not one JSON object"))
            break
        if record.get("seq") != expected_seq:
            flags.append(("forged-record", f"record {record.get('seq')} out of sequence"))
            break
        expected_seq += 1
        records.append(record)
    return records, flags


def _no_duplicate_keys(pairs):
    # A duplicated key would let the last copy win: the runner never writes one.
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("duplicate key in a record")
    return record


def _string_constants(tree: ast.Module) -> dict[str, str]:
    constants = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            constants[node.targets[0].id] = node.value.value
    return constants


def _render_message(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    """The instructor's message with what the student's values would fill in left out."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) \
                    and value.value.id in constants:
                parts.append(constants[value.value.id])
            else:
                parts.append("…")
        return "".join(parts)
    return None


def _statements_on(tree: ast.Module, line: int) -> list[ast.stmt]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.stmt) and node.lineno == line]


def _message_on(tree: ast.Module, line: int, constants: dict[str, str]) -> str | None:
    for node in _statements_on(tree, line):
        if isinstance(node, ast.Assert):
            return _render_message(node.msg, constants)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            return _render_message(node.exc.args[0], constants)
    return None


def hidden_lines(source: str) -> set[int]:
    """1-based line numbers inside the hidden-test region (delimiters included)."""
    hidden, inside = set(), False
    for number, text in enumerate(source.splitlines(), start=1):
        if text.strip() == HIDDEN_BEGIN:
            inside = True
        if inside:
            hidden.add(number)
        if text.strip() == HIDDEN_END:
            inside = False
    return hidden


def feedback_for(cell: InstructorCell, result: TestResult) -> str:
    """What the student reads about one test: only text the instructor wrote."""
    if result.status == "pass":
        return "Passed."
    if result.status == "missing":
        return ("No result: the notebook stopped before this test ran (an error that ended "
                "the run, the time limit or a resource limit; see the flags).")
    if result.status == "tampered":
        return ("Not scored: something the tests rely on was changed before this test ran "
                "(the instructor has the details).")
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        return "This test failed."
    constants = _string_constants(tree)
    line = result.line
    message = _message_on(tree, line, constants) if line else None
    error = result.error or "an error"
    if line is None:
        text = f"This test failed ({error})."
    elif line in hidden_lines(cell.source):
        text = "A hidden test in this cell failed" + (f": {message}" if message else f" ({error}).")
    else:
        check = cell.source.splitlines()[line - 1].strip()
        text = f"This check failed (line {line}): {check}\n" + (
            message if message and error == "AssertionError" else f"It raised {error}."
            + (f" {message}" if message else ""))
    return text[:MAX_FEEDBACK_CHARS]


def score(cells: list[InstructorCell], records: list[dict]) -> tuple[list[TestResult], list]:
    """A TestResult per test cell of the lab, and the flags the runner reported."""
    verdicts: dict[str, dict] = {}
    flags = []
    for record in records:
        if record.get("kind") == "verdict" and record.get("test") not in verdicts:
            verdicts[str(record.get("test"))] = record
        elif record.get("kind") == "flag" and record.get("reason") not in ("started", "cell-error"):
            flags.append((str(record.get("reason"))[:40], str(record.get("detail"))[:200]))
    results = []
    for cell in (c for c in cells if c.kind == "test"):
        verdict = verdicts.get(cell.grade_id)
        status = verdict.get("status") if verdict else "missing"
        status = status if status in VALID_STATUSES or status == "missing" else "missing"
        line = verdict.get("line") if verdict else None
        result = TestResult(
            grade_id=cell.grade_id, max_points=cell.points, status=status,
            points=cell.points if status == "pass" else 0.0,
            line=line if isinstance(line, int) else None,
            error=str(verdict.get("error"))[:60] if verdict and verdict.get("error") else None,
            tamper=[str(p)[:200] for p in (verdict.get("tamper") or [])][:8] if verdict else [],
        )
        result.feedback = feedback_for(cell, result)
        if status == "tampered":
            flags.append(("tampering", f"{cell.grade_id}: {'; '.join(result.tamper)}"[:200]))
        results.append(result)
    return results, flags


def finished(records: list[dict]) -> bool:
    return any(record.get("kind") == "done" for record in records)
