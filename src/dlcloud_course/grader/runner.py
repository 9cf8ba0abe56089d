"""The program inside the sandbox: runs one plan, reports signed verdicts. Standard library only.

Run as ``python -I runner.py`` (the container's command). It reads, from standard
input, one line with a fresh per-submission key (hex) and then the plan (JSON: the
cells in order, each ``{"kind": "locked"|"student"|"test", "id": ..., "source": ...}``),
and closes standard input before any student code runs: the key exists nowhere else in
the container, not in a file, not in the environment.

Why no Jupyter kernel: IPython gives student code input and AST transformers,
``run_cell``, ``showtraceback``, display hooks and a reply status to rewrite, and
nbgrader turns outputs into partial credit. Here a cell is ``exec`` of code compiled
before any student code ran, a test passes only when that ``exec`` returns, and no
output of any cell is read by anyone.

Why a verdict cannot be forged by printing or writing to the record stream: every
record carries an HMAC with the key, and only the audit hook holds the key (in a
closure: the hook is reachable only through the interpreter's C-level hook list, and
the ``gc`` and tracing calls that could reach it are refused). The hook signs a
verdict only when the event comes from :func:`report` called by :func:`run_plan` called
by :func:`main`, checked by the identity of the code objects on the stack, so student
code cannot ask for a signature either. Before each verdict, :func:`integrity_problems`
compares builtins, ``sys`` hooks, the names that instructor cells bound, and the
functions and classes of every module imported before the first student cell with a
snapshot: a difference turns that verdict into ``tampered`` (no points).

What this does not stop is written in docs/grading.md (objects that lie about ``==``,
answers tailored to the tests): those are answers, not a breach of the runner.
"""

import _thread
import builtins
import hashlib
import hmac
import json
import os
import sys
import time

RECORD_PREFIX = "DLCV1"
MAX_DETAIL = 200
MAX_FLAG_RECORDS = 40
STUDENT_ONLY_PREFIXES = ("ctypes.", "gc.")
RECORD_EVENTS = {"dlcloud.verdict", "dlcloud.flag", "dlcloud.done"}
POSING_EVENTS = {"compile", "code.__new__", "marshal.loads", "marshal.load"}
#: Events refused outright: nothing in an honest lab needs them, and each is a way to
#: reach the runner's state, rewrite how code runs, or leave the sandbox's rules.
REFUSED_EVENTS = {
    "sys.settrace": "tracing (can skip a test's lines)",
    "sys.setprofile": "profiling hook",
    "sys.addaudithook": "a second audit hook",
    "gc.get_objects": "walking the heap (reaches the runner's state)",
    "gc.get_referrers": "walking the heap (reaches the runner's state)",
    "gc.get_referents": "walking the heap (reaches the runner's state)",
    "sys._current_frames": "other threads' frames",
    "ctypes.dlopen": "ctypes (raw memory)",
    "ctypes.dlsym": "ctypes (raw memory)",
    "ctypes.cdata": "ctypes (raw memory)",
    "ctypes.addressof": "ctypes (raw memory)",
    "ctypes.string_at": "ctypes (raw memory)",
    "os.fork": "starting a process",
    "os.forkpty": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.system": "starting a process",
    "subprocess.Popen": "starting a process",
    "pty.spawn": "starting a process",
    "os.kill": "signalling a process",
    "os.killpg": "signalling a process",
    "signal.pthread_kill": "signalling a process",
}
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "", None}
NETWORK_EVENTS = {"socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname",
                  "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.bind"}
CELL_FILENAME_PREFIXES = ("<student:", "<locked:", "<test:")


def _short(value) -> str:
    return str(value)[:MAX_DETAIL]


def _host_of(event: str, args: tuple):
    if event in ("socket.connect", "socket.sendto", "socket.bind"):
        address = args[1] if event != "socket.sendto" else args[2]
        if isinstance(address, tuple) and address:
            return address[0]
        return "unix-socket" if isinstance(address, (str, bytes)) else address
    return args[0] if args else None


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host in LOOPBACK_HOSTS or (isinstance(host, str) and host.startswith("127."))


def _refusal(event: str, args: tuple):
    """Why ``event`` is refused, or None. Pure function of the event: no state."""
    if event in REFUSED_EVENTS:
        return REFUSED_EVENTS[event]
    if event in NETWORK_EVENTS:
        host = _host_of(event, args)
        if host == "unix-socket" and event == "socket.bind":
            return None
        if not _is_loopback(host):
            return f"network beyond loopback ({_short(host)})"
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.startswith("/proc/") and not path.startswith("/proc/self/fd"):
            parts = path.split("/")
            if len(parts) > 3 and parts[3] in ("mem", "environ", "fd", "maps", "pagemap"):
                return f"reading process internals ({_short(path)})"
            if len(parts) > 2 and parts[2].isdigit() and int(parts[2]) != os.getpid():
                return f"another process's files ({_short(path)})"
    if (event == "compile" and len(args) > 1 and isinstance(args[1], str)
            and args[1].startswith(CELL_FILENAME_PREFIXES)):
        return f"compiling code that poses as a cell ({_short(args[1])})"
    return None


def _posing_as_trusted(event: str, args: tuple, trusted_prefixes: tuple):
    """Student code making code objects that would not count as student code."""
    if event == "compile" and len(args) > 1:
        filename = os.fsdecode(args[1]) if isinstance(args[1], (str, bytes)) else ""
        if filename.startswith(trusted_prefixes):
            return f"compiling code under a library's name ({_short(filename)})"
    if event in ("code.__new__", "marshal.loads", "marshal.load"):
        return f"{event}: making code objects by hand"
    return None


def install_guard(key: bytes, record_fd: int, trusted_stack: tuple):
    """Install the audit hook that refuses, flags and signs. Returns nothing the caller keeps.

    ``trusted_stack`` are the code objects of report, run_plan and main: a verdict is
    signed only when exactly those frames called ``sys.audit("dlcloud.verdict")``.
    """
    # "busy" is per thread: a flag shared by all threads would let one thread keep the
    # hook "busy" while another makes a refused call.
    state = {"seq": 0, "flags": 0, "busy": set()}
    getframe, dumps, write, new_mac = sys._getframe, json.dumps, os.write, hmac.new
    thread_id = _thread.get_ident
    sha256 = hashlib.sha256
    report_code, run_code, main_code = trusted_stack
    trusted_prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(__file__)}) + (
        "<frozen", "<string>", "<locked:", "<test:")

    def emit(kind, payload):
        if kind == "flag":
            state["flags"] += 1
            if state["flags"] > MAX_FLAG_RECORDS:
                return  # still refused, no longer reported: a flood ends here
        state["seq"] += 1
        body = dumps({"seq": state["seq"], "kind": kind, **payload}, sort_keys=True)
        mac = new_mac(key, body.encode(), sha256).hexdigest()
        try:
            write(record_fd, f"{RECORD_PREFIX} {body} {mac}\n".encode())
        except OSError:
            pass  # the student closed the record stream: every later verdict is missing

    def called_by_runner(frame):
        # Exactly report <- run_plan <- main <- the runner's module frame, nothing below.
        for expected in (report_code, run_code, main_code):
            if frame is None or frame.f_code is not expected:
                return False
            frame = frame.f_back
        return frame is not None and frame.f_back is None

    def is_student(frame):
        # Code that is neither the interpreter's nor the libraries' nor the instructor's
        # is the student's, whatever it calls itself ("<string>" from the student is
        # refused below, at compile time).
        return not frame.f_code.co_filename.startswith(trusted_prefixes)

    def student_on_stack():
        frame = getframe(2)
        while frame is not None:
            if is_student(frame):
                return True
            frame = frame.f_back
        return False

    def hook(event, args):
        me = thread_id()
        if me in state["busy"]:
            return
        state["busy"].add(me)
        try:
            if event in RECORD_EVENTS:
                caller = getframe(1)
                if called_by_runner(caller):
                    emit(event.rpartition(".")[2], args[0])
                else:
                    emit("flag", {"reason": "forged-verdict",
                                  "detail": "code outside the runner asked for a signed record"})
                    raise PermissionError("dlcloud grader: only the runner reports verdicts")
                return
            reason = _refusal(event, args)
            if reason is None and event in POSING_EVENTS and is_student(getframe(1)):
                reason = _posing_as_trusted(event, args, trusted_prefixes)
            if reason is not None and event.startswith(STUDENT_ONLY_PREFIXES):
                # Libraries load C code through ctypes at import: refuse only when a
                # student cell is on the stack.
                reason = reason if student_on_stack() else None
            if reason is not None:
                category = "network" if reason.startswith("network") else "refused-call"
                emit("flag", {"reason": category, "detail": _short(f"{event}: {reason}")})
                raise PermissionError(f"dlcloud grader: {event} is not allowed while grading")
        finally:
            state["busy"].discard(me)

    sys.addaudithook(hook)


def report(kind: str, payload: dict) -> None:
    """Ask the audit hook to sign and send one record (only works from run_plan)."""
    sys.audit(f"dlcloud.{kind}", payload)


def _is_behaviour(value) -> bool:
    # Methods and descriptors decide what code does; plain data (caches, flags, names)
    # changes in honest runs.
    return callable(value) or isinstance(value, (classmethod, staticmethod, property))


def _snapshot_modules():
    """Identity of every module-level function and class, and of every class's own members."""
    snapshot = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        entries = {}
        for attr, value in list(namespace.items()):
            if callable(value):
                entries[attr] = id(value)
                if isinstance(value, type) and getattr(value, "__module__", None) == name:
                    for member, member_value in list(vars(value).items()):
                        if _is_behaviour(member_value):
                            entries[f"{attr}.{member}"] = id(member_value)
        snapshot[name] = (module, entries)
    return snapshot


def _module_changes(snapshot) -> list:
    changed = []
    for name, (module, entries) in snapshot.items():
        if sys.modules.get(name) is not module:
            changed.append(f"module {name} replaced")
            continue
        namespace = module.__dict__
        for attr, identity in entries.items():
            owner, _, member = attr.partition(".")
            value = namespace.get(owner)
            if member:
                value = vars(value).get(member) if isinstance(value, type) else None
            if id(value) != identity:
                changed.append(f"{name}.{attr} changed")
                if len(changed) >= 5:
                    return changed
    return changed


SYS_HOOKS = ("excepthook", "displayhook", "breakpointhook", "unraisablehook")


def integrity_problems(baseline, namespace, instructor_bindings) -> list:
    """What differs from the baseline that instructor and runner code rely on."""
    problems = []
    builtins_now = vars(builtins)
    for name, value in baseline["builtins"].items():
        if builtins_now.get(name) is not value:
            problems.append(f"builtins.{name} changed")
    for name, value in baseline["sys"].items():
        if getattr(sys, name, None) is not value:
            problems.append(f"sys.{name} changed")
    for name, value in instructor_bindings.items():
        if namespace.get(name) is not value:
            problems.append(f"{name} (defined by an instructor cell) rebound")
    if baseline["modules"] is not None:
        problems.extend(_module_changes(baseline["modules"]))
    return problems[:8]


def _failing_line(error, cell_filename):
    """The line of the test cell's own statement the error left through (outermost frame)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == cell_filename:
            return tb.tb_lineno
        tb = tb.tb_next
    return None


def _error_name(error) -> str:
    name = type(error).__name__
    return name if name.isidentifier() and len(name) <= 60 else "Exception"


def run_plan(cells, namespace, baseline, _exec=exec, _base=BaseException, _changed=dict.items,
             _clock=time.perf_counter):
    """Run every cell in order; after each test cell, report its verdict."""
    report("flag", {"reason": "started", "detail": f"{len(cells)} cells"})
    instructor_bindings = {}
    checks_s = 0.0
    for cell in cells:
        kind, cell_id, code = cell
        if kind == "student" and baseline["modules"] is None:
            baseline["modules"] = _snapshot_modules()
        before = dict(namespace)
        error = None
        try:
            _exec(code, namespace)
        except _base as raised:  # whatever a cell raises is its result
            error = raised
        if kind == "locked":
            for name, value in _changed(namespace):
                if before.get(name) is not value and not name.startswith("__"):
                    instructor_bindings[name] = value
        if kind == "test":
            checking = _clock()
            problems = integrity_problems(baseline, namespace, instructor_bindings)
            checks_s += _clock() - checking
            if problems:
                status = "tampered"
            else:
                status = "pass" if error is None else "fail"
            verdict = {"test": cell_id, "status": status, "tamper": problems,
                       "line": None if error is None else _failing_line(error, code.co_filename),
                       "error": None if error is None else _error_name(error)}
            report("verdict", verdict)
        elif error is not None:
            report("flag", {"reason": "cell-error", "detail": f"{kind} cell {cell_id}: "
                            f"{_error_name(error)}"})
        del before, error
    report("done", {"cells": len(cells), "checks_s": round(checks_s, 3)})


def _read_stdin() -> bytes:
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(0)
    return b"".join(chunks)


def _not_dumpable():
    # A non-dumpable process cannot be ptraced or have /proc/<pid>/mem read by other
    # processes of the same uid: a child the student starts cannot read the key.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_dumpable = 4
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _compile_cells(plan):
    cells = []
    for index, cell in enumerate(plan["cells"]):
        kind, cell_id = cell["kind"], cell.get("id") or f"cell-{index}"
        code = compile(cell["source"], f"<{kind}:{cell_id}>", "exec", dont_inherit=True)
        cells.append((kind, cell_id, code))
    return tuple(cells)


def main():
    raw = _read_stdin()
    key_line, _, plan_json = raw.partition(b"\n")
    key = bytes.fromhex(key_line.decode())
    plan = json.loads(plan_json)
    del raw, key_line, plan_json
    _not_dumpable()
    cells = _compile_cells(plan)
    del plan
    # Records leave on a private copy of stdout; the cells' own prints go nowhere, so
    # that nothing a student prints can reach the record stream by accident.
    record_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    import types

    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module  # the cells' module, not the runner's
    namespace = main_module.__dict__
    baseline = {"builtins": dict(vars(builtins)),
                "sys": {name: getattr(sys, name) for name in SYS_HOOKS}, "modules": None}
    install_guard(key, record_fd, (report.__code__, run_plan.__code__, main.__code__))
    del key
    run_plan(cells, namespace, baseline)
    os._exit(0)  # no atexit handlers, no finalizers of student objects after the verdicts


if __name__ == "__main__":
    main()
