"""The programs inside the sandbox: a supervisor that signs, a worker that runs cells. Standard library only.

The container's command is ``python -I runner.py --split-uids``: the **supervisor**
(:func:`supervise`). It reads, from standard input, one line with a fresh per-submission
key (hex) and then the plan (JSON: the cells in order, each ``{"kind": "locked" |
"student" | "test", "id": ..., "source": ...}``, the lab's limits, its process policy and
the files it ships), closes standard input, and starts the **worker** (``runner.py
--worker``, :func:`worker_main`) as a fresh interpreter under the student's uid; then it
becomes another uid itself. The key never exists in the worker: not in its memory (a new
``exec``), not in a file, not in its environment.

The worker runs the cells and writes, on a pipe to the supervisor, when each cell begins
and how it ended (a test: pass, fail or tampered). The supervisor never runs student or
test code: it times each cell, accepts exactly the records the plan allows in their
order (anything else voids the run: ``forged-outcome``), counts leftover processes, and
signs what it accepted. Why this split, and what it cannot see, is in docs/grading.md.

Why no Jupyter kernel: IPython gives student code input and AST transformers,
``run_cell``, ``showtraceback``, display hooks and a reply status to rewrite, and
nbgrader turns outputs into partial credit. Here a cell is ``exec`` (or, for top-level
``await``, a coroutine run in the notebook's one event loop) of code compiled before
any student code ran; a test passes only when it returns.

The worker keeps an audit hook as a second layer: it refuses tracing, heap walks,
ctypes, processes the lab does not name, network beyond loopback and /proc; it writes a
record only when :func:`report` is called by :func:`run_plan` called by
:func:`worker_main` (code objects checked by identity); before each verdict,
:func:`integrity_problems` compares builtins, ``sys`` hooks, what instructor cells bound
and every module's functions and classes with a snapshot. Everything the trusted
functions use is bound as default arguments before any student code runs.
"""

import _hashlib
import _thread
import ast
import asyncio
import builtins
import dis
import inspect
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
RECORD_EVENTS = frozenset({"dlcloud.begin", "dlcloud.end", "dlcloud.verdict", "dlcloud.flag",
                           "dlcloud.done"})
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
#: Process events a lab's policy may allow (``plan["policy"]``, from its lab.toml): the
#: program's base name must be one the lab names, and live in the image, not in a tmpfs.
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn"})
SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg"})
PROGRAM_DIRS = (sys.prefix + "/", "/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/lib/jvm/",
                "/usr/local/bin/")
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
                           "loadavg", "uptime", "mounts", "mountinfo", "cpuset", "limits",
                           "smaps_rollup", "cmdline"})
#: What psutil reads about other processes (pid 1's start time, a child's command line,
#: memory totals): no memory contents, no environment, no open files; the supervisor's
#: command line has no key in it.
PROC_READABLE_OF_OTHERS = frozenset({"stat", "status", "statm", "smaps_rollup", "cmdline"})
#: psutil's ``memory_full_info`` falls back to ``/proc/<pid>/smaps`` when ``smaps_rollup``
#: fails, as it does for a zombie (Spark's ``spark-class`` leaves its launcher's ``bash``
#: unreaped under the JVM, and ``dlcloud.memory`` samples it twice a second) and for a
#: process that is exiting or gone (Spark's Python workers, one per task). Such a process
#: has no memory: its ``smaps`` is empty, or not there. That file, of another process
#: whose ``statm`` is all zeros or that is gone, may be opened.
ZOMBIE_READABLE = "smaps"
#: threadpoolctl (imported by scikit-learn, lab 4) lists the libraries this process loaded
#: from ``/proc/self/maps``. The worker holds no key (the supervisor does), and its own
#: mappings name only the image's libraries: that one file, of this process only, may be
#: opened. Another process's ``maps`` (the supervisor's) stays refused.
OWN_READABLE = "maps"
#: Where a replacement function must come from to be a library's own patch, not tampering
#: (pyspark rewrites py4j's smart_decode, typing_extensions parts of typing, at run time).
LIBRARY_PREFIXES = tuple({sys.prefix + "/", sys.base_prefix + "/"})
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
           _range=range, _list_len=list.__len__, _list_item=list.__getitem__):
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
        # subprocess.Popen's event carries its argv as a list: copied the same way.
        for length, item in ((_len, _item), (_list_len, _list_item)):
            try:
                return _tuple([_plain(item(value, i), depth + 1) for i in _range(length(value))])
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


def _has_no_memory(pid, _open=os.open, _read=os.read, _close=os.close, _flags=os.O_RDONLY,
                   _repr=int.__repr__, _gone=(FileNotFoundError, ProcessLookupError),
                   _errors=(OSError, ValueError, IndexError)):
    """Whether process ``pid`` (an exact int) has no memory left, or is gone.

    A zombie or an exiting process has released its memory: its ``statm`` is all zeros
    and its ``smaps`` empty; a process that is gone has no files. Called inside the hook
    (whose own ``open`` events it then ignores).
    """
    try:
        fd = _open("/proc/" + _repr(pid) + "/statm", _flags)
        try:
            text = _read(fd, 256)
        finally:
            _close(fd)
        return text.split()[0] == b"0"
    except _gone:
        return True
    except _errors:
        return False


def _refusal(event, args, _refused=REFUSED_EVENTS, _network=NETWORK_EVENTS, _host_of=_host_of,
             _is_loopback=_is_loopback, _short=_short, _type=type, _str=str,
             _bytes=bytes, _int=int, _len=len, _fsdecode=_decoded, _getpid=os.getpid,
             _internals=PROC_INTERNALS, _readable=PROC_READABLE, _getcwd=os.getcwd,
             _cells=CELL_FILENAME_PREFIXES, _others_readable=PROC_READABLE_OF_OTHERS,
             _zombie_readable=ZOMBIE_READABLE, _has_no_memory=_has_no_memory,
             _own_readable=OWN_READABLE, _int_repr=int.__repr__):
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
        if (event == "open" and _len(parts) == 4 and parts[0] == "" and parts[1] == "proc"
                and parts[3] == _zombie_readable and parts[2].isdigit() and parts[2].isascii()
                and _int(parts[2]) != _getpid() and _has_no_memory(_int(parts[2]))):
            return None  # a zombie's smaps: empty (see ZOMBIE_READABLE)
        if (event == "open" and _len(parts) == 4 and parts[0] == "" and parts[1] == "proc"
                and parts[3] == _own_readable
                and (parts[2] == "self" or parts[2] == _int_repr(_getpid()))):
            return None  # this process's own library list (see OWN_READABLE)
        for part in parts:
            if part in _internals:
                return "reading process internals (" + _short(path) + ")"
        absolute = path if path.startswith("/") else _getcwd() + "/" + path
        if absolute == "/proc" or absolute.startswith("/proc/"):
            if event != "open" or parts[-1] not in _readable:
                return "reaching into /proc (" + _short(path) + ")"
            if _len(parts) > 2 and parts[2].isdigit() and _int(parts[2]) != _getpid() \
                    and parts[-1] not in _others_readable:
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


def _program(event, args, _type=type, _str=str, _bytes=bytes, _tuple=tuple, _len=len,
             _fsdecode=_decoded):
    """The path or name of the program a spawn event starts (exact copies only), or None."""
    if event == "subprocess.Popen":
        executable, argv = (args[0], args[1]) if _len(args) > 1 else (None, None)
        if executable is None and _type(argv) is _tuple and argv:
            executable = argv[0]
        elif executable is None:
            executable = argv
    elif event == "os.spawn":
        executable = args[1] if _len(args) > 1 else None
    else:
        executable = args[0] if args else None
    return _fsdecode(executable) if _type(executable) in (_str, _bytes) else None


def _process_allowed(event, args, policy, _program=_program, _dirs=PROGRAM_DIRS,
                     _spawn=SPAWN_EVENTS, _signals=SIGNAL_EVENTS):
    """Whether the lab's policy allows this process event (``policy``: names, fork, signals)."""
    names, fork, signals = policy[0], policy[1], policy[2]
    if event == "os.fork" or event == "os.forkpty":
        return fork
    if event in _signals:
        return signals
    if event not in _spawn:
        return False
    program = _program(event, args)
    if program is None:
        return False
    name = program.rpartition("/")[2]
    if "/" in program and not program.startswith(_dirs):
        return False  # a copy in /tmp or the home would be noexec anyway; say so
    return name in names


def _runner_function(target, _type=type, _function=types.FunctionType, _runner=RUNNER_FILE,
                     _str_copy=str.__str__):
    return _type(target) is _function and _str_copy(target.__code__.co_filename) == _runner


def install_guard(record_fd: int, trusted_stack: tuple,
                  policy: tuple = ((), False, False, frozenset())):
    """Install the audit hook that refuses, flags and reports. Returns nothing the caller keeps.

    ``trusted_stack`` are the code objects of report, run_plan and worker_main: a record
    is written only when exactly those frames called ``sys.audit("dlcloud.<kind>")``.
    There is no key here: the supervisor, another process under another uid, signs what
    it accepts, and checks that the records follow the plan (see :func:`supervise`).
    ``policy`` is (program names, fork allowed, signals allowed, Unix sockets that may be
    connected to) from the lab's lab.toml: the last is the engine broker's socket for a
    lab that builds images (lab 2), and nothing else.
    """
    # "busy" is per thread: a flag shared by all threads would let one thread keep the
    # hook "busy" while another makes a refused call.
    state = {"seq": 0, "flags": 0, "busy": set()}
    emitting = _thread.allocate_lock()
    getframe, write = sys._getframe, os.write
    thread_id, dump, refusal, posing = _thread.get_ident, _dump, _refusal, _posing_as_trusted
    process_allowed, process_events = _process_allowed, SPAWN_EVENTS | SIGNAL_EVENTS | {
        "os.fork", "os.forkpty"}
    spawn_events, program_of = SPAWN_EVENTS, _program
    runner_function, record_events, posing_events = _runner_function, RECORD_EVENTS, POSING_EVENTS
    student_only, max_flags = STUDENT_ONLY_PREFIXES, MAX_FLAG_RECORDS
    report_code, run_code, main_code = trusted_stack
    trusted_prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(RUNNER_FILE)}) + (
        "<frozen", "<string>", "<locked:", "<test:")
    permission_error, os_error, base_exception = PermissionError, OSError, BaseException
    str_copy, plain, opaque = str.__str__, _plain, OPAQUE
    len_, type_, str_, bytes_ = len, type, str, bytes
    engine_sockets = frozenset(policy[3]) if len_(policy) > 3 else frozenset()
    library_prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(RUNNER_FILE)})

    def emit(kind, payload):
        # One record at a time: a library's thread (Spark's, TensorFlow's) may be refused
        # while the main thread reports; numbers must reach the pipe in their order.
        with emitting:
            if kind == "flag":
                state["flags"] += 1
                if state["flags"] > max_flags:
                    return  # still refused, no longer reported: a flood ends here
            state["seq"] += 1
            body = dump({**payload, "seq": state["seq"], "kind": kind})
            try:
                write(record_fd, (body + "\n").encode())
            except os_error:
                pass  # the student closed the record pipe: every later verdict is missing

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
        if event in process_events and process_allowed(event, args, policy):
            return None
        if event == "socket.connect" and len_(args) > 1 and type_(args[1]) in (str_, bytes_) \
                and (args[1] if type_(args[1]) is str_ else args[1].decode(errors="replace")) \
                in engine_sockets:
            return None  # the engine broker's socket (a lab that builds images)
        reason = refusal(event, args)
        if reason is not None and event in spawn_events:
            program = program_of(event, args)
            reason = reason + " (" + (program[-80:] if program is not None else "?") + \
                ", not a program this lab names)"
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


def _library_made(value, _type=type, _function=types.FunctionType, _str_copy=str.__str__,
                  _prefixes=LIBRARY_PREFIXES) -> bool:
    """A plain function whose code a library's file defines: a library patched a library.

    Student code cannot make one: compiling under a library's name and building code
    objects are refused for it. It can assign an existing library function somewhere
    else; docs/grading.md says so.
    """
    return _type(value) is _function and _str_copy(value.__code__.co_filename).startswith(_prefixes)


_MISSING = object()
#: Types whose equality is their own C code: defaults and globals of these may be equal copies.
_SCALAR_TYPES = (type(None), bool, int, float, str, bytes)
#: The file name cloudpickle (3.1) gives the code of a function it rebuilt.
REBUILT_FILENAME = "<dynamic-code>"


def _rebuilt_copy(now, was, _type=type, _function=types.FunctionType, _cell=types.CellType,
                  _scalars=_SCALAR_TYPES, _str_copy=str.__str__, _get=dict.get,
                  _dict_len=dict.__len__, _dict_iter=dict.__iter__, _tuple_len=tuple.__len__,
                  _item=tuple.__getitem__, _range=range, _missing=_MISSING,
                  _rebuilt_name=REBUILT_FILENAME, _contents=types.CellType.cell_contents.__get__,
                  _errors=(ValueError, TypeError, AttributeError)) -> bool:
    """``now`` is ``was`` rebuilt, as cloudpickle rebuilds a class it pickled by value.

    Unpickled in the process that defined it (MLflow's ``pyfunc.load_model`` of lab 8's
    ``PayoutModel``), a class pickled by value is the same class object, and cloudpickle
    sets every attribute again: new functions with equal code, equal defaults and their
    own copy of the globals they name. Such a copy is not tampering when it behaves as the
    original: its code equal (by value; only the file name may be cloudpickle's), the
    same builtins, and its defaults, closure and every global its code names identical,
    equal scalars, or themselves such copies (three levels deep at most). A function made
    with the original's code but other globals or defaults is not a copy. Only the
    builtin types' own C slots run here, never a method a student could define.
    """
    pending = [(now, was, 0)]
    while pending:
        a, b, depth = pending.pop()
        if a is b:
            continue
        kind = _type(a)
        if kind is _type(b) and kind in _scalars:
            if kind.__eq__(a, b) is True:
                continue
            return False
        if depth > 3 or kind is not _function or _type(b) is not _function:
            return False
        code, original = a.__code__, b.__code__
        name = _str_copy(code.co_filename)
        if name != _str_copy(original.co_filename) and name != _rebuilt_name:
            return False
        if not code == original or a.__builtins__ is not b.__builtins__:
            return False
        for left, right in ((a.__defaults__, b.__defaults__), (a.__closure__, b.__closure__)):
            if (left is None) != (right is None):
                return False
            if left is None:
                continue
            if _tuple_len(left) != _tuple_len(right):
                return False
            for index in _range(_tuple_len(left)):
                x, y = _item(left, index), _item(right, index)
                if _type(x) is _cell or _type(y) is _cell:
                    try:
                        x, y = _contents(x), _contents(y)
                    except _errors:
                        return False  # an empty cell, or a cell against a value
                pending.append((x, y, depth + 1))
        left, right = a.__kwdefaults__, b.__kwdefaults__
        left, right = {} if left is None else left, {} if right is None else right
        if _dict_len(left) != _dict_len(right):
            return False
        for key in _dict_iter(right):
            pending.append((_get(left, key, _missing), _get(right, key, _missing), depth + 1))
        here, there = a.__globals__, b.__globals__
        for global_name in code.co_names:
            pending.append((_get(here, global_name, _missing), _get(there, global_name, _missing),
                            depth + 1))
    return True


def _module_changes(snapshot, _modules=sys.modules, _vars=vars, _len=len,
                    _library_made=_library_made, _rebuilt_copy=_rebuilt_copy) -> list:
    changed = []
    for name, module, namespace, entries in snapshot:
        if _modules.get(name) is not module:
            changed.append("module " + name + " replaced")
            continue
        get = namespace.get
        for attr, value, members in entries:
            now = get(attr)
            if now is not value:
                if not _library_made(now) and not _rebuilt_copy(now, value):
                    changed.append(name + "." + attr + " changed")
            elif members:
                own = _vars(value).get  # value is the snapshot's own class object
                for member, member_value in members:
                    if own(member) is not member_value and not _library_made(own(member)) \
                            and not _rebuilt_copy(own(member), member_value):
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


def _stored_names(code, _instructions=dis.get_instructions, _frozenset=frozenset) -> frozenset:
    """The global names a cell's top-level code assigns (STORE_NAME / STORE_GLOBAL)."""
    return _frozenset(i.argval for i in _instructions(code) if i.opname in ("STORE_NAME", "STORE_GLOBAL"))


def _behaviour(value, _callable=callable, _type=type, _module=types.ModuleType) -> bool:
    # callable() asks the type's slot, not the object: no student method runs here.
    return _callable(value) or _type(value) is _module


def run_plan(cells, namespace, baseline, output_fd, _run_until_complete, _exec=exec, _eval=eval,
             _coroutine_flag=inspect.CO_COROUTINE, _base=BaseException,
             _dict=dict, _changed=dict.items, _clock=time.perf_counter, _report=report,
             _integrity=integrity_problems, _snapshot=_snapshot_modules, _line=_failing_line,
             _error_name=_error_name, _fstat=os.fstat, _len=len, _round=round,
             _int_repr=int.__repr__, _note_bytes=OUTPUT_NOTE_BYTES, _tuple=tuple,
             _stored_names=_stored_names, _enumerate=enumerate, _is_behaviour=_behaviour):
    """Run every cell in order; report when each begins and how it ended (tests: a verdict).

    The supervisor sees ``begin`` and ``end`` of every cell: it times each cell itself
    and accepts exactly one ``end`` per ``begin``, in the plan's order.
    """
    _report("flag", {"reason": "started", "detail": "cells: " + _int_repr(_len(cells))})
    # The names each test cell's own top-level code assigns (from its bytecode, read before
    # any student code runs): a test that sets `client` or `r` again is not tampering.
    test_stores = _dict((cell_id, _stored_names(code)) for kind, cell_id, code in cells if kind == "test")
    instructor_bindings = ()  # rebuilt, never edited: a frame's reader sees a stale tuple
    modules = None
    checks_s = cells_s = 0.0
    for index, (kind, cell_id, code) in _enumerate(cells):
        if kind == "student" and modules is None:
            modules = _snapshot()
        before = _dict(namespace)
        error = None
        _report("begin", {"cell": index})
        running = _clock()
        try:
            if code.co_flags & _coroutine_flag:
                # One loop for the whole notebook, as a kernel has: what a cell started
                # (a grpc.aio server, a task) is there for the next one.
                _run_until_complete(_eval(code, namespace))
            else:
                _exec(code, namespace)
        except _base as raised:  # whatever a cell raises is its result
            error = raised
        cells_s += _clock() - running
        if kind == "locked":
            # Behaviour only (functions, classes, modules): a test's loop variable or a
            # helper's data that a solution cell names again is the student's namespace.
            bound = [(name, value) for name, value in _changed(namespace)
                     if before.get(name) is not value and not name.startswith("__")
                     and _is_behaviour(value)]
            names = {name for name, _ in bound}
            instructor_bindings = _tuple(
                [(n, v) for n, v in instructor_bindings if n not in names] + bound)
        if kind == "test":
            own = test_stores[cell_id]
            instructor_bindings = _tuple(
                [(n, v) for n, v in instructor_bindings if n not in own]
                + [(n, namespace[n]) for n in own if n in namespace and _is_behaviour(namespace[n])])
            checking = _clock()
            problems = _integrity(baseline, modules, namespace, instructor_bindings)
            checks_s += _clock() - checking
            if problems:
                status = "tampered"
            else:
                status = "pass" if error is None else "fail"
            _report("end", {"cell": index, "status": status, "tamper": problems,
                            "line": None if error is None else _line(error, code.co_filename),
                            "error": None if error is None else _error_name(error)})
        else:
            _report("end", {"cell": index, "status": "ok" if error is None else "error",
                            "tamper": [], "line": None,
                            "error": None if error is None else _error_name(error)})
        del before, error
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
    # processes of the same uid: a child the student starts cannot read its memory.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_dumpable = 4
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _compile_cells(plan):
    cells = []
    for index, cell in enumerate(plan["cells"]):
        kind, cell_id = cell["kind"], cell.get("id") or f"cell-{index}"
        # Top-level await, as IPython allows it (lab 7's asyncio and grpc.aio cells).
        code = compile(cell["source"], f"<{kind}:{cell_id}>", "exec", dont_inherit=True,
                       flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        cells.append((kind, cell_id, code))
    return tuple(cells)


def _private_output() -> int:
    """An unlinked file for the cells' output: nobody reads it, its size is a flag."""
    path = f"/tmp/.cell-output-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    os.unlink(path)
    return fd


def _write_lab_files(files: dict) -> None:
    """The files the lab ships next to its notebook (manifests, a .proto), in the working folder."""
    import base64

    for relative, data in files.items():
        parts = relative.split("/")
        if relative.startswith("/") or ".." in parts or not all(parts):
            continue  # the host never sends one; refuse rather than write outside the home
        path = pathlib.Path(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def _policy_of(plan) -> tuple:
    policy = plan.get("policy") or {}
    return (frozenset(str(name) for name in policy.get("programs", ())),
            bool(policy.get("fork")), bool(policy.get("signals")),
            frozenset(str(path) for path in policy.get("engine_sockets", ())))


def worker_main():
    """The worker: runs the cells as the sandbox's student uid; has no key and no verdict of its own."""
    plan = json.loads(_read_stdin())
    _not_dumpable()
    _write_lab_files(plan.get("files") or {})
    cells = _compile_cells(plan)
    policy = _policy_of(plan)
    del plan
    # Records leave on a private copy of stdout (a pipe to the supervisor); the cells' own
    # prints go to a file that nobody reads.
    record_fd = os.dup(1)
    output_fd = _private_output()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module  # the cells' module, not the runner's
    namespace = main_module.__dict__
    baseline = (tuple(vars(builtins).items()),
                tuple((name, getattr(sys, name)) for name in SYS_HOOKS))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    install_guard(record_fd, (report.__code__, run_plan.__code__, worker_main.__code__), policy)
    run_plan(cells, namespace, baseline, output_fd, loop.run_until_complete)
    os._exit(0)  # no atexit handlers, no finalizers of student objects after the verdicts


# --- the supervisor: never runs student code, holds the key, decides what is signed ------

WORKER_UID = 1000
SUPERVISOR_UID = 1001
MAX_WORKER_LINE = 4096
MAX_WORKER_BYTES = 1 << 20
MAX_FORWARDED_FLAGS = 60
WORKER_KINDS = frozenset({"flag", "begin", "end", "done"})
TEST_STATUSES = frozenset({"pass", "fail", "tampered"})
OTHER_STATUSES = frozenset({"ok", "error"})


class ProtocolError(ValueError):
    """A worker line that the runner's own code never writes: somebody else wrote it."""


def _identifier(value, limit=60):
    if value is None:
        return None
    if not isinstance(value, str) or not value.isidentifier() or len(value) > limit:
        raise ProtocolError("an error name that is not an identifier")
    return value


class Supervision:
    """The supervisor's view of one run: the plan, what the worker reported, what it observed.

    A record counts only when it is the next step of the plan: ``begin`` of the next
    cell, then exactly one ``end`` of that cell, ..., then ``done``. A line that breaks
    that order, a second ``end``, a sequence number out of turn, malformed JSON: none is
    something the runner writes, so some code in the worker wrote it, and every verdict
    of the run is void (``forged-outcome``).
    """

    def __init__(self, cells: list[dict], cell_s: float, notebook_s: float, clock=time.monotonic):
        self.cells, self.cell_s, self.notebook_s, self.clock = cells, cell_s, notebook_s, clock
        self.started = clock()
        self.records: list[tuple[str, dict]] = []
        self.next_cell, self.running, self.cell_started = 0, None, None
        self.seq, self.flags, self.done = 0, 0, False
        self.violations: list[str] = []
        self.cell_times: list[float] = []

    def deadline(self) -> float:
        notebook = self.started + self.notebook_s
        if self.running is None:
            return notebook
        return min(notebook, self.cell_started + self.cell_s)

    def accept(self, line: bytes) -> None:
        try:
            self._accept(line)
        except ProtocolError as error:
            self.violations.append(str(error)[:160])

    def _accept(self, line: bytes) -> None:
        if self.done:
            raise ProtocolError("a record after the run was done")
        try:
            record = json.loads(line)
        except ValueError:
            raise ProtocolError("a line on the record pipe that is not JSON") from None
        if not isinstance(record, dict) or record.get("kind") not in WORKER_KINDS:
            raise ProtocolError("a record of no kind the runner writes")
        if record.get("seq") != self.seq + 1:
            raise ProtocolError(f"record {record.get('seq')!r} out of turn (expected {self.seq + 1})")
        self.seq += 1
        getattr(self, "_" + record["kind"])(record)

    def _flag(self, record: dict) -> None:
        reason, detail = record.get("reason"), record.get("detail")
        if not isinstance(reason, str) or not isinstance(detail, str):
            raise ProtocolError("a flag without a reason")
        self.flags += 1
        if self.flags <= MAX_FORWARDED_FLAGS:
            self.records.append(("flag", {"reason": reason[:40], "detail": detail[:200]}))

    def _begin(self, record: dict) -> None:
        if self.running is not None or record.get("cell") != self.next_cell \
                or self.next_cell >= len(self.cells):
            raise ProtocolError(f"begin of cell {record.get('cell')!r} out of turn")
        self.running, self.cell_started = self.next_cell, self.clock()

    def _end(self, record: dict) -> None:
        index = record.get("cell")
        if self.running is None or index != self.running:
            raise ProtocolError(f"end of cell {index!r}, which is not running")
        cell = self.cells[index]
        statuses = TEST_STATUSES if cell["kind"] == "test" else OTHER_STATUSES
        status, line, tamper = record.get("status"), record.get("line"), record.get("tamper")
        if status not in statuses or not (line is None or type(line) is int) \
                or not isinstance(tamper, list) or not all(isinstance(t, str) for t in tamper):
            raise ProtocolError(f"an end of cell {index} that the runner does not write")
        error = _identifier(record.get("error"))
        self.cell_times.append(round(self.clock() - self.cell_started, 3))
        self.running, self.next_cell = None, self.next_cell + 1
        if cell["kind"] == "test":
            self.records.append(("verdict", {"test": cell.get("id"), "status": status,
                                             "tamper": [t[:200] for t in tamper[:8]],
                                             "line": line, "error": error}))
        elif status == "error":
            self.records.append(("flag", {"reason": "cell-error",
                                          "detail": f"{cell['kind']} cell {cell.get('id')}: {error}"}))

    def _done(self, record: dict) -> None:
        if self.running is not None or self.next_cell != len(self.cells):
            raise ProtocolError("done before every cell ended")
        numbers = [record.get(name) for name in ("cells_s", "checks_s")]
        if not all(type(n) in (int, float) and 0 <= n < 1e6 for n in numbers):
            raise ProtocolError("a done record that the runner does not write")
        self.done = True
        self.records.append(("done", {"cells": len(self.cells), "cells_s": numbers[0],
                                      "checks_s": numbers[1],
                                      "supervised_s": round(self.clock() - self.started, 3)}))

    def timed_out(self) -> None:
        """The deadline passed: name the cell (or the notebook) that ran past its limit."""
        if self.running is not None and self.clock() >= self.cell_started + self.cell_s:
            cell = self.cells[self.running]
            self.records.append(("flag", {"reason": "cell-timeout", "detail":
                                          f"{cell['kind']} cell {cell.get('id')} still running "
                                          f"after {self.cell_s:g} s"}))
        else:
            self.records.append(("flag", {"reason": "timeout", "detail":
                                          f"the notebook still running after {self.notebook_s:g} s"}))

    def signed(self, key: bytes) -> list[bytes]:
        """The records to send to the host, verdicts voided if anything was forged."""
        records = list(self.records)
        if self.violations:
            records.insert(0, ("flag", {"reason": "forged-outcome", "detail": self.violations[0]}))
            records = [(kind, {**body, "status": "tampered",
                               "tamper": ["forged-outcome: " + self.violations[0]]})
                       if kind == "verdict" else (kind, body) for kind, body in records]
        lines = []
        for seq, (kind, body) in enumerate(records, start=1):
            text = json.dumps({**body, "kind": kind, "seq": seq}, sort_keys=True)
            mac = _hashlib.hmac_digest(key, text.encode(), "sha256").hex()
            lines.append(f"{RECORD_PREFIX} {text} {mac}\n".encode())
        return lines


def _watch(supervision: Supervision, worker, record_fd: int) -> bool:
    """Read the worker's records until it is done, ends or runs past a deadline (True)."""
    import select

    buffer, total = b"", 0
    while not supervision.done:
        left = supervision.deadline() - supervision.clock()
        if left <= 0:
            supervision.timed_out()
            return True
        ready, _, _ = select.select([record_fd], [], [], min(left, 0.5))
        if not ready:
            if worker.poll() is not None:
                return False  # ended; a child of the student's may hold the pipe open
            continue
        chunk = os.read(record_fd, 1 << 16)
        if not chunk:
            return False
        total += len(chunk)
        if total > MAX_WORKER_BYTES:
            supervision.records.append(("flag", {"reason": "output-limit", "detail":
                                                 f"more than {MAX_WORKER_BYTES} bytes on the record pipe"}))
            supervision.violations.append("more on the record pipe than any run writes")
            return False
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            supervision.accept(line)
        if len(buffer) > MAX_WORKER_LINE:
            supervision.violations.append("a line on the record pipe longer than any record")
            buffer = b""
    return False


def _other_processes(known: set[int]) -> int:
    """Processes in the container besides its init and ``known``; 0 outside a container."""
    if os.getppid() != 1:
        return 0  # not under the container's init: a test run on a host, say
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return 0
    return len([pid for pid in pids if pid not in known | {1, os.getpid()}])


def _start_worker(plan_json: bytes, split_uids: bool):
    """The worker as a fresh interpreter (nothing of this process's memory), as the student uid."""
    import subprocess

    read_fd, write_fd = os.pipe()
    home = os.environ.get("HOME", "/tmp")
    identity = {"user": WORKER_UID, "group": WORKER_UID, "extra_groups": []} if split_uids else {}
    worker = subprocess.Popen([sys.executable, "-I", RUNNER_FILE, "--worker"], stdin=subprocess.PIPE,
                              stdout=write_fd, stderr=subprocess.DEVNULL, close_fds=True,
                              cwd=home if os.path.isdir(home) else None, **identity)
    os.close(write_fd)
    try:
        worker.stdin.write(plan_json)
        worker.stdin.close()
    except OSError:
        pass  # the worker died before reading its plan: no records, the host says so
    return worker, read_fd


def _become_supervisor_uid() -> None:
    # After this, the worker (another uid) cannot signal, trace or read this process.
    os.setgroups([])
    os.setresgid(SUPERVISOR_UID, SUPERVISOR_UID, SUPERVISOR_UID)
    os.setresuid(SUPERVISOR_UID, SUPERVISOR_UID, SUPERVISOR_UID)


def supervise(split_uids: bool) -> None:
    """The container's main process: key and plan from stdin, one worker, signed records out."""
    raw = _read_stdin()
    key_line, _, plan_json = raw.partition(b"\n")
    key = bytes.fromhex(key_line.decode())
    plan = json.loads(plan_json)
    limits = plan.get("limits") or {}
    policy = plan.get("policy") or {}
    pids_limit = int(plan.get("pids_limit") or 64)
    supervision = Supervision(plan["cells"], float(limits.get("cell_s") or 120),
                              float(limits.get("notebook_s") or 170))
    worker, record_fd = _start_worker(plan_json, split_uids)
    del raw, plan_json, plan
    if split_uids:
        _become_supervisor_uid()
    _not_dumpable()
    timed_out = _watch(supervision, worker, record_fd)
    _after_the_run(supervision, worker, timed_out, pids_limit, policy)
    for line in supervision.signed(key):
        os.write(1, line)
    os._exit(0)  # in the sandbox, the container ends with this process: the worker too


def _after_the_run(supervision, worker, timed_out: bool, pids_limit: int, policy: dict) -> None:
    if timed_out:
        try:
            worker.kill()  # same uid outside the sandbox; in it, the container's end does it
        except OSError:
            pass
    try:
        status = worker.wait(timeout=2)
    except Exception:  # noqa: BLE001 -- still running: it ends with the container
        status = None
    if status == -9 and not timed_out and not supervision.done:
        supervision.records.append(("flag", {"reason": "memory-limit", "detail":
                                             "the worker was killed (SIGKILL) before it was done: "
                                             "most likely at the memory limit"}))
    others = _other_processes({worker.pid})
    processes_allowed = bool(policy.get("processes"))
    if others and not processes_allowed:
        # _posixsubprocess.fork_exec starts processes without an audit event: the
        # instructor hears of them, and of a process table that is full.
        supervision.records.append(("flag", {"reason": "leftover-process",
                                             "detail": f"{others} other processes still running"}))
    if others >= pids_limit - 4:
        supervision.records.append(("flag", {"reason": "pids-limit", "detail":
                                             f"the process limit of {pids_limit} was reached"}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker_main()
    else:
        supervise(split_uids=sys.argv[1:] == ["--split-uids"])
