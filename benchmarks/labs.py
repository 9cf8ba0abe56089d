"""Run each lab's solution and print wall time and peak memory against the Binder budget.

    python benchmarks/labs.py [--lab lab1-bpaas ...]

Budget per lab: its manifest's (2 GiB of memory and 5 minutes on 2 cores, a Binder pod). Peak memory
is the largest sum, over 0.25 s samples, of the proportional set size (PSS) of the
kernel and every process it starts (JVM, gRPC servers, Spark and TensorFlow workers)
plus the processes inside Docker containers (found by their cgroup): see
dlcloud.memory. Run on a 2-core machine to match Binder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from traitlets.config.loader import PyFileConfigLoader

from dlcloud.memory import MemoryWatch
from dlcloud_course.generate import render_lab
from dlcloud_course.labs import Lab, discover

REPO = Path(__file__).resolve().parent.parent
SAMPLE_EVERY_S = 0.25


def cell_timeout_s() -> int:
    """The per-cell timeout set once, in nbgrader_config.py."""
    return PyFileConfigLoader(str(REPO / "nbgrader_config.py")).load_config().Execute.timeout


def prepare_environment(lab: Lab) -> None:
    """Docker labs get the engine and a local base image, as in the tests."""
    if "docker" in lab.needs:
        from dlcloud import docker_engine

        docker_engine.connect()
        os.environ.setdefault("DLCLOUD_BASE_IMAGE", docker_engine.build_local_base_image())


def run_lab(lab: Lab) -> dict:
    prepare_environment(lab)
    errors = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{lab.name}-") as tmp:
        folder = render_lab(lab, Path(tmp))
        start = time.perf_counter()
        # The runner itself (nbclient) is not part of the lab: only what it starts.
        memory = MemoryWatch(interval_s=SAMPLE_EVERY_S, include_root=False, include_containers=True)
        memory.start()
        try:
            for path in sorted(folder.glob("*.ipynb")):
                notebook = nbformat.read(path, as_version=4)
                client = NotebookClient(
                    notebook, timeout=cell_timeout_s(), kernel_name="python3",
                    resources={"metadata": {"path": str(folder)}}, allow_errors=True,
                )
                client.execute()
                errors += [
                    f"{path.name}: {o.get('ename')}: {o.get('evalue')}"
                    for c in notebook.cells if c.cell_type == "code"
                    for o in c.get("outputs", []) if o.get("output_type") == "error"
                ]
        finally:
            memory.stop()
        seconds = time.perf_counter() - start
    return {"lab": lab.name, "budget_s": lab.wall_s, "budget_mib": lab.memory_mib, "seconds": seconds,
            "peak_mib": memory.peak_mb, "errors": errors, "peak_processes": memory.peak_processes}


def _short(command: str) -> str:
    """A process's command line cut to a recognisable name (java, ipykernel, ...)."""
    for known in ("java", "ipykernel", "pyspark.daemon", "dockerd", "uvicorn"):
        if known in command:
            return known
    return command.split()[0].rsplit("/", 1)[-1][:20] if command.strip() else "?"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'lab':<24} {'wall s':>8} {'peak MiB':>9} {'budget':>14} {'within':>7}  errors")
    for row in rows:
        within = row["seconds"] <= row["budget_s"] and row["peak_mib"] <= row["budget_mib"]
        budget = f"{row['budget_s']} s/{row['budget_mib']} MiB"
        print(
            f"{row['lab']:<24} {row['seconds']:>8.1f} {row['peak_mib']:>9.0f} "
            f"{budget:>14} {'yes' if within else 'NO':>7}  "
            f"{len(row['errors'])}"
        )
        for error in row["errors"][:3]:
            print(f"    {error[:160]}")
        # What the peak is made of: the processes that would have to shrink to fit.
        biggest = sorted(row.get("peak_processes", {}).values(), key=lambda p: -p[1])[:4]
        print("    at the peak: " + ", ".join(f"{mb:.0f} {_short(name)}" for name, mb in biggest))
    print(f"\n{os.cpu_count()} cores; Python {sys.version.split()[0]}; "
          "peak = summed PSS of kernel, children and containers.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", action="append", help="only this lab (repeatable)")
    wanted = parser.parse_args().lab
    labs = [lab for lab in discover() if not wanted or lab.name in wanted]
    rows = []
    for lab in labs:
        print(f"running {lab.name} ...", flush=True)
        rows.append(run_lab(lab))
    print_table(rows)


if __name__ == "__main__":
    main()
