"""Deployment benchmark for chapter 8 / lab 8: what a hot swap and a canary rollback cost.

Prints one table (no assertions), from the lab's own reference cells (the server, the
versioned model, the load generator, the canary router and rule), run in this process as
the notebook runs them:

* **hot swap**: four clients call the gRPC server for a few seconds while a new version's
  folder is published (copied, then renamed into `<model>/<version>/`); requests served and
  failed, and the time from the folder appearing to the new version's first answer (the
  watcher polls every 50 ms, then loads and warms the version up before switching);
* **canary rollback**: a candidate that fails 30 % of its calls gets a fifth of the traffic
  until the controller rolls it back; requests served and failed (the failures are the
  price of the minimum sample), and the time to the rollback;
* **canary promotion**: the same with a healthy candidate.

Each scenario runs `--repeats` times; the table gives the median and the range.

    .venv/bin/python benchmarks/deployment.py              # about a minute on 2 cores
    .venv/bin/python benchmarks/deployment.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

LAB = "lab8-continuous-deployment"
# The lab's cells this benchmark runs, in notebook order: plumbing and the reference solutions.
CELLS = ("setup", "data", "server", "hot-swap", "load-generator", "canary-router", "canary-decision")
LOAD_SECONDS = 5.0
PUBLISH_AFTER_S = 1.5


def lab_namespace() -> dict:
    """The names the lab's cells define, after running them as the kernel would."""
    from dlcloud_course.labs import find
    from dlcloud_course.render import read_lab_notebook

    lab = find(LAB)
    cells = {cell.get("id"): cell.source for cell in read_lab_notebook(lab.source).cells}
    namespace: dict = {"__name__": "__main__"}
    os.chdir(lab.source.parent)  # the lab reads its files from the current folder
    for cell_id in CELLS:
        exec(compile(cells[cell_id], f"{LAB}:{cell_id}", "exec"), namespace)  # noqa: S102 - the lab's own cells
    return namespace


def hot_swap(lab: dict, trial: int) -> dict:
    """Serve version 1, publish version 2 under load; served, failed, seconds to first answer."""
    import threading

    base = lab["WORK"] / f"bench-swap-{trial}" / lab["MODEL_NAME"]
    base.mkdir(parents=True)
    lab["publish"](lab["SHIPPED_V1"], base, 1)
    models = lab["VersionedModel"](base)
    models.poll()
    watcher = lab["Watcher"](models).start()
    server, target = lab["start_server"](models)
    appeared = {}

    def publish_later():
        time.sleep(PUBLISH_AFTER_S)
        appeared["at"] = time.monotonic()
        lab["publish"](lab["SHIPPED_V1"], base, 2)  # same weights, new version: the swap is what is timed

    publisher = threading.Thread(target=publish_later, daemon=True)
    publisher.start()
    try:
        calls = lab["generate_load"](target, seconds=LOAD_SECONDS)
    finally:
        publisher.join()
        watcher.stop()
        server.stop(grace=1).wait()
    first_v2 = min((c.end for c in calls if c.version == 2), default=None)
    return {"served": sum(c.ok for c in calls), "failed": sum(not c.ok for c in calls),
            "seconds": None if first_v2 is None else first_v2 - appeared["at"]}


def canary(lab: dict, faulty: bool, trial: int) -> dict:
    """A canary with 30 % errors (or healthy): served, failed, final action, seconds to it."""
    v1 = lab["v1"]
    candidate = lab["Faulty"](v1, error_share=0.3, seed=trial) if faulty else v1
    router = lab["CanaryRouter"](stable=(1, v1), canary=(2, candidate))
    started = time.monotonic()
    log, calls = lab["run_canary"](router, lab["decide"], seconds=LOAD_SECONDS)
    final = log[-1] if log else {"action": None, "t": started}
    return {"served": sum(c.ok for c in calls), "failed": sum(not c.ok for c in calls),
            "action": final["action"], "seconds": final["t"] - started}


def summary(values: list, unit: str = "", digits: int = 2) -> str:
    """Median (min-max) of the known values, or "never"."""
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    middle = statistics.median(known)
    text = f"{middle:.{digits}f}{unit}"
    return text + (f" ({min(known):.{digits}f}-{max(known):.{digits}f})" if len(known) > 1 else "")


def print_table(results: dict[str, list[dict]]) -> None:
    print(f"\n{'scenario':<20} {'served':>18} {'failed':>12} {'outcome':>9}  seconds")
    what = {"hot swap": "from the folder appearing to v2's first answer",
            "canary, 30% errors": "to the controller's decision", "canary, healthy": "to the controller's decision"}
    for name, runs in results.items():
        served = summary([r["served"] for r in runs], digits=0)
        failed = summary([r["failed"] for r in runs], digits=0)
        outcome = ",".join(sorted({str(r.get("action", "swapped")) for r in runs}))
        seconds = summary([r["seconds"] for r in runs], " s")
        print(f"{name:<20} {served:>18} {failed:>12} {outcome:>9}  {seconds} {what[name]}")
    runs = len(next(iter(results.values())))
    print(f"\n{os.cpu_count()} cores; Python {sys.version.split()[0]}; {LOAD_SECONDS:.0f} s of load per run, "
          f"4 client threads, one row per request; median (min-max) of {runs} runs.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario (default 3)")
    repeats = parser.parse_args().repeats
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    lab = lab_namespace()
    results = {"hot swap": [], "canary, 30% errors": [], "canary, healthy": []}
    try:
        for trial in range(repeats):
            results["hot swap"].append(hot_swap(lab, trial))
            results["canary, 30% errors"].append(canary(lab, faulty=True, trial=trial))
            results["canary, healthy"].append(canary(lab, faulty=False, trial=trial))
            print(f"run {trial + 1}/{repeats} done", flush=True)
    finally:
        for running in reversed(lab["RUNNING"]):
            running.stop(grace=None)
        shutil.rmtree(lab["WORK"], ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
