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

Student code shares this interpreter, so everything the trusted functions use is bound
when they are defined, before any student code runs: builtins, tables and helpers are
default arguments (an immutable tuple; rewriting ``__defaults__`` or ``__code__`` of a
runner function is an audited event, refused), never looked up in module globals that a
student could reach through a frame and rebind.

What this does not stop is written in docs/grading.md (objects that lie about ``==``,
answers tailored to the tests): those are answers, not a breach of the runner.
"""

import _hashlib
import _thread
import builtins
import dis
import json
import os
import pathlib
import sys
import time
import types
from json.encoder import encode_basestring_ascii

RECORD_PREFIX = "DLCV1"
MAX_DETAIL = 200
MAX_FLAG_RECORDS = 40
#: The cells' own output goes to an unlinked file; more than this is flagged.
OUTPUT_NOTE_BYTES = 1024 * 1024
STUDENT_ONLY_PREFIXES = ("ctypes.", "gc.")
RECORD_EVENTS = frozenset({"dlcloud.verdict", "dlcloud.flag", "dlcloud.done"})
POSING_EVENTS = frozenset({"compile", "code.__new__", "marshal.loads", "marshal.load"})
#: Events refused outright: nothing in an honest lab needs them, and each is a way to
#: reach the runner's state, rewrite how code runs, or leave the sandbox's rules.
REFUSED_EVENTS = types.MappingProxyType({
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
})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "0.0.0.0", ""})
NETWORK_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.getaddrinfo",
                            "socket.gethostbyname", "socket.gethostbyname_ex",
                            "socket.gethostbyaddr", "socket.bind"})
CELL_FILENAME_PREFIXES = ("<student:", "<locked:", "<test:")
#: A path with one of these components reads a process's memory or secrets, whatever
#: the way there (/proc/self/mem, /proc/self/task/1/mem, a dir_fd, a symlink in /dev).
PROC_INTERNALS = frozenset({"mem", "environ", "maps", "smaps", "pagemap", "map_files", "auxv",
                            "syscall", "stack", "kcore", "kmem"})
#: The only files under /proc that may be opened: what libraries read about resources.
PROC_READABLE = frozenset({"stat", "status", "statm", "cgroup", "cpuinfo", "meminfo",
                           "loadavg", "uptime", "mounts", "mountinfo", "cpuset", "limits"})
SYS_HOOKS = ("excepthook", "displayhook", "breakpointhook", "unraisablehook")
RUNNER_FILE = __file__
_BEHAVIOUR_TYPES = (classmethod, staticmethod, property)
BUILTINS_DICT, SYS_DICT = vars(builtins), vars(sys)


def _scalar(value, _type=type, _str=str, _int=int, _float=float, _bool=bool,
            _quote=encode_basestring_ascii, _repr=float.__repr__, _int_repr=int.__repr__,
            _limit=MAX_DETAIL):
    # Exact types only: isinstance() may ask an object for its __class__, which runs code.
    kind = _type(value)
    if value is None:
        return "null"
    if kind is _bool:
        return "true" if value else "false"
    if kind is _int:
        return _int_repr(value)
    if kind is _float:
        return _repr(value)
    if kind is _str:
        return _quote(value[:_limit])
    return '"?"'


def _dump(record, _scalar=_scalar, _type=type, _list=list, _tuple=tuple,
          _sorted=sorted, _str=str, _quote=encode_basestring_ascii, _join=", ".join):
    """JSON of a flat record (scalars and lists of scalars), without the json package.

    No recursion and no global names: nothing a student rebinds changes what is signed.
    """
    fields = []
    for name in _sorted(record):
        value = record[name]
        if _type(value) is _list or _type(value) is _tuple:
            text = "[" + _join([_scalar(item) for item in value]) + "]"
        else:
            text = _scalar(value)
        fields.append(_quote(name) + ": " + text)
    return "{" + _join(fields) + "}"


class _Opaque:
    """Stands for an audit argument the hook will not touch (its methods are the student's)."""

    __slots__ = ()

    def __repr__(self):
        return "<object>"


OPAQUE = _Opaque()


def _plain(value, depth=0, _type=type, _str_copy=str.__str__, _bytes_copy=bytes.__bytes__,
           _int_copy=int.__int__, _float=float, _len=tuple.__len__, _item=tuple.__getitem__,
           _posix_types=(pathlib.PurePosixPath, pathlib.PosixPath),
           _parts=pathlib.PurePath.__dict__["_parts"].__get__,
           _root=pathlib.PurePath.__dict__["_root"].__get__, _join="/".join,
           _errors=(TypeError, ValueError, AttributeError), _opaque=OPAQUE, _tuple=tuple,
           _range=range):
    """An exact-type copy of an audit argument, made without running any of its methods.

    The slot wrappers of the builtin types (``str.__str__``, ``tuple.__getitem__``, ...)
    are C code that ignores a subclass's overrides; paths are read through pathlib's
    own slot descriptors, captured before any student code ran.
    """
    if value is None or _type(value) is _float:
        return value
    for copy in (_str_copy, _bytes_copy, _int_copy):
        try:
            return copy(value)
        except _errors:
            pass
    if _type(value) in _posix_types:
        parts = _parts(value)
        return _root(value) + _join(parts[1:]) if _root(value) else _join(parts)
    if depth < 2:
        try:
            return _tuple([_plain(_item(value, i), depth + 1) for i in _range(_len(value))])
        except _errors:
            pass
    return _opaque


def _short(value, _type=type, _str=str, _bytes=bytes, _int=int, _int_repr=int.__repr__,
           _limit=MAX_DETAIL) -> str:
    # Never str() of an unknown object: its __str__ would be student code in the hook.
    kind = _type(value)
    if kind is _str:
        return value[:_limit]
    if kind is _bytes:
        return value[:_limit].decode("utf-8", "replace")
    if kind is _int:
        return _int_repr(value)
    return "<object>" if value is not None else "None"


# The functions below see only what _plain made: exact str, bytes, int, float, None,
# tuples of those, and OPAQUE. They compare types with "is", never isinstance().

def _decoded(path, _type=type, _bytes=bytes):
    # Not os.fsdecode: it looks names up in the os module, which a student can rebind.
    return path.decode("utf-8", "surrogateescape") if _type(path) is _bytes else path


def _host_of(event, args, _type=type, _tuple=tuple, _str=str, _bytes=bytes, _len=len):
    if event in ("socket.connect", "socket.sendto", "socket.bind"):
        address = args[2] if event == "socket.sendto" and _len(args) > 2 else (
            args[1] if _len(args) > 1 else None)
        if _type(address) is _tuple and address:
            return address[0]
        return "unix-socket" if _type(address) in (_str, _bytes) else address
    return args[0] if args else None


def _is_loopback(host, _type=type, _str=str, _bytes=bytes, _loopback=LOOPBACK_HOSTS):
    if _type(host) is _bytes:
        host = host.decode(errors="replace")
    if host is None:
        return True
    return _type(host) is _str and (host in _loopback or host.startswith("127."))


def _refusal(event, args, _refused=REFUSED_EVENTS, _network=NETWORK_EVENTS, _host_of=_host_of,
             _is_loopback=_is_loopback, _short=_short, _type=type, _str=str,
             _bytes=bytes, _int=int, _len=len, _fsdecode=_decoded, _getpid=os.getpid,
             _internals=PROC_INTERNALS, _readable=PROC_READABLE, _getcwd=os.getcwd,
             _cells=CELL_FILENAME_PREFIXES):
    """Why ``event`` is refused, or None (a function of the event and the working folder)."""
    if event in _refused:
        return _refused[event]
    if event in _network:
        host = _host_of(event, args)
        if host == "unix-socket" and event == "socket.bind":
            return None
        if not _is_loopback(host):
            return "network beyond loopback (" + _short(host) + ")"
    if event in ("open", "os.chdir", "os.symlink") and args and _type(args[0]) in (_str, _bytes):
        path = _fsdecode(args[0])
        parts = path.split("/")
        for part in parts:
            if part in _internals:
                return "reading process internals (" + _short(path) + ")"
        absolute = path if path.startswith("/") else _getcwd() + "/" + path
        if absolute == "/proc" or absolute.startswith("/proc/"):
            if event != "open" or parts[-1] not in _readable:
                return "reaching into /proc (" + _short(path) + ")"
            if _len(parts) > 2 and parts[2].isdigit() and _int(parts[2]) != _getpid():
                return "another process's files (" + _short(path) + ")"
    if (event == "compile" and _len(args) > 1 and _type(args[1]) is _str
            and args[1].startswith(_cells)):
        return "compiling code that poses as a cell (" + _short(args[1]) + ")"
    return None


def _posing_as_trusted(event, args, trusted_prefixes, _type=type, _str=str,
                       _bytes=bytes, _len=len, _fsdecode=_decoded, _short=_short):
    """Student code making code objects that would not count as student code."""
    if event == "compile" and _len(args) > 1:
        filename = _fsdecode(args[1]) if _type(args[1]) in (_str, _bytes) else ""
        if filename.startswith(trusted_prefixes):
            return "compiling code under a library's name (" + _short(filename) + ")"
    if event in ("code.__new__", "marshal.loads", "marshal.load"):
        return event + ": making code objects by hand"
    return None


def _runner_function(target, _type=type, _function=types.FunctionType, _runner=RUNNER_FILE,
                     _str_copy=str.__str__):
    return _type(target) is _function and _str_copy(target.__code__.co_filename) == _runner


def install_guard(key: bytes, record_fd: int, trusted_stack: tuple):
    """Install the audit hook that refuses, flags and signs. Returns nothing the caller keeps.

    ``trusted_stack`` are the code objects of report, run_plan and main: a verdict is
    signed only when exactly those frames called ``sys.audit("dlcloud.verdict")``.
    Everything the hook uses lives in its closure, which nothing can reach but the
    interpreter's list of audit hooks.
    """
    # "busy" is per thread: a flag shared by all threads would let one thread keep the
    # hook "busy" while another makes a refused call.
    state = {"seq": 0, "flags": 0, "busy": set()}
    getframe, write, hmac_digest = sys._getframe, os.write, _hashlib.hmac_digest
    thread_id, dump, refusal, posing = _thread.get_ident, _dump, _refusal, _posing_as_trusted
    runner_function, record_events, posing_events = _runner_function, RECORD_EVENTS, POSING_EVENTS
    student_only, max_flags, prefix = STUDENT_ONLY_PREFIXES, MAX_FLAG_RECORDS, RECORD_PREFIX
    report_code, run_code, main_code = trusted_stack
    trusted_prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(RUNNER_FILE)}) + (
        "<frozen", "<string>", "<locked:", "<test:")
    permission_error, os_error, base_exception = PermissionError, OSError, BaseException
    str_copy, plain, opaque = str.__str__, _plain, OPAQUE
    len_, type_, str_ = len, type, str
    library_prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(RUNNER_FILE)})

    def emit(kind, payload):
        if kind == "flag":
            state["flags"] += 1
            if state["flags"] > max_flags:
                return  # still refused, no longer reported: a flood ends here
        state["seq"] += 1
        body = dump({**payload, "seq": state["seq"], "kind": kind})
        mac = hmac_digest(key, body.encode(), "sha256").hex()
        try:
            write(record_fd, (prefix + " " + body + " " + mac + "\n").encode())
        except os_error:
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
        # refused below, at compile time). An exact copy of the name: a str subclass's
        # startswith() would be student code running inside the hook.
        return not str_copy(frame.f_code.co_filename).startswith(trusted_prefixes)

    def student_on_stack():
        frame = getframe(2)
        while frame is not None:
            if is_student(frame):
                return True
            frame = frame.f_back
        return False

    def reason_for(event, raw_args):
        # Only exact copies from here on: nothing the student defined runs in the hook.
        args = plain(raw_args)
        reason = refusal(event, args)
        if reason is not None and event.startswith(student_only):
            # Libraries load C code through ctypes at import: refuse only when a
            # student cell is on the stack.
            reason = reason if student_on_stack() else None
        if reason is None and event == "open" and args and args[0] is opaque \
                and student_on_stack():
            reason = "opening a path object the grader cannot read safely"
        if reason is None and event in posing_events and is_student(getframe(2)):
            reason = posing(event, args, trusted_prefixes)
        if reason is None and event == "import" and len_(args) > 1 and type_(args[1]) is str_ \
                and not args[1].startswith(library_prefixes):
            # A C extension from /tmp or a memfd would run native code in this process.
            reason = "loading native code from outside the image (" + args[1][:120] + ")"
        if reason is None and event in ("object.__setattr__", "object.__delattr__") \
                and raw_args and runner_function(raw_args[0]):
            reason = "rewriting the runner's functions"
        return reason

    def hook(event, args):
        me = thread_id()
        if me in state["busy"]:
            return
        state["busy"].add(me)
        try:
            event = str_copy(event)  # sys.audit() accepts a str subclass from anyone
            if event in record_events:
                if called_by_runner(getframe(1)):
                    emit(event[8:], args[0])
                    return
                emit("flag", {"reason": "forged-verdict",
                              "detail": "code outside the runner asked for a signed record"})
                raise permission_error("dlcloud grader: only the runner reports verdicts")
            reason = reason_for(event, args)
            if reason is not None:
                category = "network" if reason.startswith("network") else "refused-call"
                emit("flag", {"reason": category, "detail": (event + ": " + reason)[:200]})
                raise permission_error("dlcloud grader: " + event + " is not allowed while grading")
        except permission_error:
            raise
        except base_exception:
            # The hook itself must never be what breaks: a student's odd argument to an
            # audited call is that call's problem, not the grader's.
            return
        finally:
            state["busy"].discard(me)

    sys.addaudithook(hook)


def report(kind: str, payload: dict, _audit=sys.audit) -> None:
    """Ask the audit hook to sign and send one record (only works from run_plan)."""
    _audit("dlcloud." + kind, payload)


def _snapshot_modules(_modules=sys.modules, _list=list, _tuple=tuple, _isinstance=isinstance,
                      _dict=dict, _callable=callable, _type=type, _id=id, _getattr=getattr,
                      _vars=vars, _behaviour=_BEHAVIOUR_TYPES):
    """Identity of every module-level function and class, and of every class's own members.

    Methods and descriptors decide what code does; plain data (caches, flags, names)
    changes in honest runs and is left out. Tuples all the way down: a student who
    reaches the snapshot through a frame cannot edit it to match a change.
    """
    snapshot = []
    for name, module in _list(_modules.items()):
        namespace = _getattr(module, "__dict__", None)
        if not _isinstance(namespace, _dict):
            continue
        entries = []
        for attr, value in _list(namespace.items()):
            if not _callable(value):
                continue
            members = ()
            if _isinstance(value, _type) and _getattr(value, "__module__", None) == name:
                members = _tuple([(member, member_value)
                                  for member, member_value in _list(_vars(value).items())
                                  if _callable(member_value)
                                  or _isinstance(member_value, _behaviour)])
            entries.append((attr, value, members))
        snapshot.append((name, module, namespace, _tuple(entries)))
    return _tuple(snapshot)


def _module_changes(snapshot, _modules=sys.modules, _vars=vars, _len=len) -> list:
    changed = []
    for name, module, namespace, entries in snapshot:
        if _modules.get(name) is not module:
            changed.append("module " + name + " replaced")
            continue
        get = namespace.get
        for attr, value, members in entries:
            if get(attr) is not value:
                changed.append(name + "." + attr + " changed")
            elif members:
                own = _vars(value).get  # value is the snapshot's own class object
                for member, member_value in members:
                    if own(member) is not member_value:
                        changed.append(name + "." + attr + "." + member + " changed")
                        break
            if _len(changed) >= 5:
                return changed
    return changed


def integrity_problems(baseline, modules, namespace, instructor_bindings,
                       _changes=_module_changes, _builtins=BUILTINS_DICT, _sys=SYS_DICT) -> list:
    """What differs from the baseline that instructor and runner code rely on.

    ``baseline`` is ``(builtins_items, sys_hook_items)``, ``modules`` the snapshot of
    :func:`_snapshot_modules` (or None), ``instructor_bindings`` (name, value) pairs: all
    tuples, so that nothing a student can reach can be edited to match a change.
    """
    problems = []
    builtins_items, sys_items = baseline
    for name, value in builtins_items:
        if _builtins.get(name) is not value:
            problems.append("builtins." + name + " changed")
    for name, value in sys_items:
        if _sys.get(name) is not value:
            problems.append("sys." + name + " changed")
    for name, value in instructor_bindings:
        if namespace.get(name) is not value:
            problems.append(name + " (defined by an instructor cell) rebound")
    if modules is not None:
        for problem in _changes(modules):
            if problem not in problems:
                problems.append(problem)
    return problems[:8]


def _failing_line(error, cell_filename):
    """The line of the test cell's own statement the error left through (outermost frame)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == cell_filename:
            return tb.tb_lineno
        tb = tb.tb_next
    return None


def _error_name(error, _type=type, _len=len) -> str:
    name = _type(error).__name__
    return name if name.isidentifier() and _len(name) <= 60 else "Exception"


def _other_processes(_listdir=os.listdir, _getpid=os.getpid, _getppid=os.getppid,
                     _int=int, _len=len, _errors=(OSError, ValueError)) -> int:
    """Processes in the container besides its init (pid 1) and the runner; 0 outside one."""
    if _getppid() != 1:
        return 0  # not under the container's init: a test run on a host, say
    try:
        pids = [_int(entry) for entry in _listdir("/proc") if entry.isdigit()]
    except _errors:
        return 0
    return _len([pid for pid in pids if pid not in (1, _getpid())])


def _stored_names(code, _instructions=dis.get_instructions, _frozenset=frozenset) -> frozenset:
    """The global names a cell's top-level code assigns (STORE_NAME / STORE_GLOBAL)."""
    return _frozenset(i.argval for i in _instructions(code) if i.opname in ("STORE_NAME", "STORE_GLOBAL"))


def run_plan(cells, namespace, baseline, output_fd, pids_limit, _exec=exec, _base=BaseException,
             _dict=dict, _changed=dict.items, _clock=time.perf_counter, _report=report,
             _integrity=integrity_problems, _snapshot=_snapshot_modules, _line=_failing_line,
             _error_name=_error_name, _fstat=os.fstat, _len=len, _round=round,
             _int_repr=int.__repr__, _note_bytes=OUTPUT_NOTE_BYTES, _tuple=tuple,
             _other_processes=_other_processes, _stored_names=_stored_names):
    """Run every cell in order; after each test cell, report its verdict."""
    _report("flag", {"reason": "started", "detail": "cells: " + _int_repr(_len(cells))})
    # The names each test cell's own top-level code assigns (from its bytecode, read before
    # any student code runs): a test that sets `client` or `r` again is not tampering.
    test_stores = _dict((cell_id, _stored_names(code)) for kind, cell_id, code in cells if kind == "test")
    instructor_bindings = ()  # rebuilt, never edited: a frame's reader sees a stale tuple
    modules = None
    checks_s = cells_s = 0.0
    for kind, cell_id, code in cells:
        if kind == "student" and modules is None:
            modules = _snapshot()
        before = _dict(namespace)
        error = None
        running = _clock()
        try:
            _exec(code, namespace)
        except _base as raised:  # whatever a cell raises is its result
            error = raised
        cells_s += _clock() - running
        if kind == "locked":
            bound = [(name, value) for name, value in _changed(namespace)
                     if before.get(name) is not value and not name.startswith("__")]
            names = {name for name, _ in bound}
            instructor_bindings = _tuple(
                [(n, v) for n, v in instructor_bindings if n not in names] + bound)
        if kind == "test":
            own = test_stores[cell_id]
            instructor_bindings = _tuple(
                [(n, v) for n, v in instructor_bindings if n not in own]
                + [(n, namespace[n]) for n in own if n in namespace])
            checking = _clock()
            problems = _integrity(baseline, modules, namespace, instructor_bindings)
            checks_s += _clock() - checking
            if problems:
                status = "tampered"
            else:
                status = "pass" if error is None else "fail"
            _report("verdict", {"test": cell_id, "status": status, "tamper": problems,
                                "line": None if error is None else _line(error, code.co_filename),
                                "error": None if error is None else _error_name(error)})
        elif error is not None:
            _report("flag", {"reason": "cell-error",
                             "detail": kind + " cell " + cell_id + ": " + _error_name(error)})
        del before, error
    others = _other_processes()
    if others:
        # _posixsubprocess.fork_exec starts processes without an audit event: they cannot
        # read the key (this process is not dumpable) and die with the container, but
        # the instructor hears of them, and of a process table that is full.
        _report("flag", {"reason": "leftover-process",
                         "detail": _int_repr(others) + " other processes still running"})
        if others >= pids_limit - 4:
            _report("flag", {"reason": "pids-limit",
                             "detail": "the process limit of " + _int_repr(pids_limit) + " was reached"})
    written = _fstat(output_fd).st_size
    if written > _note_bytes:
        _report("flag", {"reason": "output-limit",
                         "detail": "the cells wrote " + _int_repr(written) + " bytes of output"})
    _report("done", {"cells": _len(cells), "cells_s": _round(cells_s, 3),
                     "checks_s": _round(checks_s, 3)})


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


def _private_output() -> int:
    """An unlinked file for the cells' output: nobody reads it, its size is a flag."""
    path = f"/tmp/.cell-output-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    os.unlink(path)
    return fd


def main():
    raw = _read_stdin()
    key_line, _, plan_json = raw.partition(b"\n")
    key = bytes.fromhex(key_line.decode())
    plan = json.loads(plan_json)
    del raw, key_line, plan_json
    _not_dumpable()
    cells = _compile_cells(plan)
    pids_limit = int(plan.get("pids_limit") or 64)
    del plan
    # Records leave on a private copy of stdout; the cells' own prints go to a file that
    # nobody reads, so that nothing a student prints can reach the record stream.
    record_fd = os.dup(1)
    output_fd = _private_output()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module  # the cells' module, not the runner's
    namespace = main_module.__dict__
    baseline = (tuple(vars(builtins).items()),
                tuple((name, getattr(sys, name)) for name in SYS_HOOKS))
    install_guard(key, record_fd, (report.__code__, run_plan.__code__, main.__code__))
    del key
    run_plan(cells, namespace, baseline, output_fd, pids_limit)
    os._exit(0)  # no atexit handlers, no finalizers of student objects after the verdicts


if __name__ == "__main__":
    main()
