"""Unit tests of dlcloud.memory, which the benchmarks and lab 5 use to measure budgets."""

from __future__ import annotations

import os
import subprocess
import sys

from dlcloud.memory import MemoryWatch, process_tree_memory


def test_memory_watch_measures_this_process():
    watch = MemoryWatch(interval_s=0.05).start()
    peak = watch.stop()
    assert 10 < peak < 100_000
    assert os.getpid() in watch.peak_processes


def test_children_are_counted_and_the_root_can_be_left_out():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        with_root = process_tree_memory()
        children_only = process_tree_memory(include_root=False)
        assert child.pid in with_root and child.pid in children_only
        assert os.getpid() in with_root and os.getpid() not in children_only
    finally:
        child.kill()
        child.wait()


def test_release_unused_memory_returns_freed_heap_to_the_system():
    from dlcloud.memory import process_tree_memory_mb, release_unused_memory

    # Many small objects: freed, glibc keeps them in its heap until malloc_trim.
    garbage = [bytearray(512) for _ in range(400_000)]
    grown = process_tree_memory_mb(include_root=True)
    del garbage
    released = release_unused_memory(settle_s=0)
    assert isinstance(released, float)
    assert process_tree_memory_mb(include_root=True) < grown - 100, (
        "freeing 200 MiB of small objects and trimming should shrink this process"
    )


def test_only_containers_started_while_watching_are_counted(monkeypatch):
    import time

    from dlcloud import memory

    def sleeper():
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"])

    earlier = sleeper()
    time.sleep(2.5)  # start times are known to about a second
    since = time.time()
    later, root = sleeper(), sleeper()
    # Two children stand in for container processes (no Docker Engine needed here); the
    # tree watched is another child's, so that neither is counted as a descendant.
    monkeypatch.setattr(memory, "_in_container", lambda p: p.pid in (earlier.pid, later.pid))
    try:
        counted = memory.process_tree_memory(
            root.pid, include_root=False, include_containers=True,
            containers_started_after=since)
        assert later.pid in counted and earlier.pid not in counted
        assert earlier.pid in memory.process_tree_memory(
            root.pid, include_root=False, include_containers=True)
    finally:
        for child in (earlier, later, root):
            child.kill()
            child.wait()


def test_lab_budget_reports_wall_time_peak_and_processes():
    from dlcloud.memory import LabBudget

    budget = LabBudget(memory_mib=2048, wall_s=300, interval_s=0.05).start()
    report = budget.report()
    first, *processes = report.splitlines()
    assert "budget 300 s" in first and "budget 2048 MiB" in first and budget.watch.peak_mb > 0
    assert any(f"pid {os.getpid()}" in line for line in processes), report
