"""Memory of a process tree, as the 2 GiB budget of a lab counts it.

A lab's memory is its kernel plus every process the kernel starts (the JVM, Spark's
Python workers, TensorFlow replicas, servers) plus, optionally, the processes inside
Docker containers. Proportional set size (PSS) counts a page shared by several
processes (TensorFlow's libraries, forked workers) once in the sum, as a cgroup does;
where Linux gives no PSS the resident size stands in (and errs high).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from pathlib import Path

import psutil

__all__ = ["LabBudget", "MemoryWatch", "release_unused_memory", "process_tree_memory_mb"]


def _in_container(process: psutil.Process) -> bool:
    try:
        return "docker" in Path(f"/proc/{process.pid}/cgroup").read_text()
    except OSError:
        return False


def _started_after(process: psutil.Process, since: float | None) -> bool:
    try:
        # Linux gives start times relative to a boot time in whole seconds: allow 1 s.
        return since is None or process.create_time() >= since - 1.0
    except psutil.Error:
        return False


def process_tree_memory(
    pid: int | None = None, include_root: bool = True, include_containers: bool = False,
    containers_started_after: float | None = None,
) -> dict[int, tuple[str, float]]:
    """Memory of a process, each of its descendants (and containers): ``{pid: (name, MiB)}``.

    ``include_containers`` adds the processes of Docker containers, which are not
    descendants of anything a lab starts; ``containers_started_after`` (a
    ``time.time()``) keeps only those started since then, so that containers of other
    users of the same engine are not counted.
    """
    root = psutil.Process(pid or os.getpid())
    processes = [root] if include_root else []
    processes += root.children(recursive=True)
    if include_containers:
        processes += [
            p for p in psutil.process_iter()
            if _in_container(p) and _started_after(p, containers_started_after)
        ]
    usage = {}
    for proc in processes:
        try:
            info = proc.memory_full_info()
            name = " ".join(proc.cmdline()[:3])[:80] or proc.name()
            usage[proc.pid] = (name, (getattr(info, "pss", None) or info.rss) / 2**20)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return usage


def process_tree_memory_mb(pid: int | None = None, **options) -> float:
    """Memory of a process and all its descendants (the JVM, Python workers), in MiB."""
    return sum(mb for _, mb in process_tree_memory(pid, **options).values())


class MemoryWatch:
    """Samples :func:`process_tree_memory_mb` in the background and keeps the peak.

    ``watch = MemoryWatch().start()`` ... ``watch.stop()``; ``watch.peak_mb`` and, per
    process at that moment, ``watch.peak_processes``.
    """

    def __init__(self, interval_s: float = 0.5, pid: int | None = None, **options):
        self.interval_s = interval_s
        self.pid = pid
        #: ``include_root``, ``include_containers`` and ``containers_started_after`` of
        #: :func:`process_tree_memory`; watching containers counts those started since
        #: :meth:`start` unless ``containers_started_after`` says otherwise.
        self.options = options
        self.peak_mb = 0.0
        #: ``{pid: (name, MiB)}`` of every process at the peak.
        self.peak_processes: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> float:
        usage = process_tree_memory(self.pid, **self.options)
        current = sum(mb for _, mb in usage.values())
        if current > self.peak_mb:
            self.peak_mb, self.peak_processes = current, usage
        return current

    def start(self) -> MemoryWatch:
        if self.options.get("include_containers"):
            # Count the containers started while watching, not those running before.
            self.options.setdefault("containers_started_after", time.time())

        def loop():
            while not self._done.is_set():
                self.sample()
                self._done.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.peak_mb


def _malloc_trim() -> None:
    """Ask glibc's malloc to return the free memory at the top of its heaps (Linux only)."""
    try:
        # CDLL(None): the symbols already loaded in this process, the C library among them
        # (find_library would start ldconfig to look for a file we have loaded anyway).
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to trim, and nothing lost


def release_unused_memory(spark=None, settle_s: float = 0.5) -> float:
    """Hand memory that this process (and Spark's JVM) hold but no longer use back to the system.

    Runtimes keep freed memory to reuse it: Python's ``gc`` frees objects in reference
    cycles, but glibc's malloc and pyarrow's allocator keep freed blocks, and the JVM keeps
    its heap as large as it ever grew until a full collection shrinks it. Before a step
    that needs much memory at once (starting TensorFlow processes), calling this returns
    it: ``gc.collect()``, pyarrow's ``release_unused()``, glibc's ``malloc_trim`` and, given
    a SparkSession, ``System.gc()`` in the JVM. Returns the MiB the process tree (this
    process and its children: the JVM) shrank by.
    """
    before = process_tree_memory_mb()
    gc.collect()
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except ImportError:
        pass
    _malloc_trim()
    if spark is not None:
        # A full collection, after which the JVM shrinks its heap to the live data plus
        # MaxHeapFreeRatio (see dlcloud.spark.DEFAULT_CONF) and returns the rest.
        spark.sparkContext._jvm.System.gc()
    time.sleep(settle_s)  # G1 uncommits the freed heap regions in the background
    return before - process_tree_memory_mb()


class LabBudget:
    """A lab's bill against its budget: wall time and peak memory of the kernel and its children.

    ``budget = LabBudget().start()`` in a lab's first cell, ``print(budget.report())`` in
    its last: the wall time since start, the peak of :class:`MemoryWatch` (the kernel, the
    JVM, Spark's Python workers, TensorFlow replicas) and the processes at that peak,
    against the Binder-sized budget of 2 GiB and 5 minutes on 2 cores.
    """

    def __init__(self, memory_mib: float = 2048, wall_s: float = 300, interval_s: float = 0.5):
        self.memory_mib = memory_mib
        self.wall_s = wall_s
        self.watch = MemoryWatch(interval_s=interval_s)
        self._started = 0.0

    def start(self) -> LabBudget:
        self._started = time.perf_counter()
        self.watch.start()
        return self

    def report(self) -> str:
        """Stop watching and return the bill, one line per process at the peak."""
        seconds = time.perf_counter() - self._started
        peak = self.watch.stop()
        lines = [f"wall time {seconds:.0f} s (budget {self.wall_s:.0f} s), peak memory {peak:.0f} MiB "
                 f"(budget {self.memory_mib:.0f} MiB; kernel + JVM + Python workers, proportional set size)"]
        ranked = sorted(self.watch.peak_processes.items(), key=lambda item: -item[1][1])
        lines += [f"  {mb:6.0f} MiB  pid {pid}  {name}" for pid, (name, mb) in ranked]
        return "\n".join(lines)
