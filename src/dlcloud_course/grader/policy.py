"""What a lab may do in its sandbox, read from its ``lab.toml``: programs, limits, an engine.

The runner refuses starting or signalling processes unless the lab's policy names the
program. The policy comes from the manifest the lab already has:

- ``needs``/``optional`` name the lab's tools: ``java`` lets PySpark start
  ``spark-submit`` (whose shell script starts the JVM), ``cluster`` lets the lab run
  ``kubectl`` (its offline ``kustomize`` too); ``docker`` gives the sandbox an engine of
  its own, the broker of :mod:`.engine_broker` (never the host's socket), ``gpu`` adds
  nothing (graded on CPU);
- an optional ``[grading]`` table for what the manifest does not say otherwise::

      [grading]
      programs = ["hadolint", "zizmor"]   # executables the lab's cells start
      fork = false                         # os.fork (multiprocessing's "fork" method)
      cell_s = 120                         # one cell's time limit
      wall_s = 600                         # the whole notebook's (default: [budget] wall_s)
      pids = 256                           # processes and threads together
      tmpfs_mib = 256                      # each of /tmp and the home (default 64)
      cpus = 2                             # the CPU quota (default 1)

  The two ``tmpfs`` are memory: their pages count against the sandbox's memory limit,
  so a larger ``tmpfs_mib`` raises that limit by what the two may hold beyond the
  default (the lab's ``[budget]`` is what its processes may use, not its files).

- ``[budget]`` gives memory (memory+swap) and the whole notebook's wall-clock limit
  (``[grading] wall_s`` overrides the latter for the sandbox).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from .sandbox import Limits

#: Programs each ``needs``/``optional`` entry brings. Only the program the Python
#: process starts is checked: what a shell script then runs is not Python and has no
#: audit hook, but it runs as the student's uid, in the same container, without network.
PROGRAMS_OF_NEED = {
    "java": ("spark-submit", "java"),
    "cluster": ("kubectl",),
}
#: Programs a lab starts that its lab.toml does not name yet. Lab 3 validates offline
#: with the ``kubernetes-validate`` command; its manifest should say so in
#: ``[grading] programs`` (then this entry goes).
#: Lab 7 compiles its .proto with ``python -m grpc_tools.protoc`` in a fresh interpreter.
UNDECLARED_PROGRAMS: dict[str, tuple[str, ...]] = {}
#: Started by libraries in any lab: ``platform.processor()`` runs ``uname -p``, and
#: ``ctypes.util.find_library`` asks ``ldconfig -p``, then ``gcc`` and ``ld`` (lab 7's
#: REST baseline), and matplotlib builds its font cache with ``fc-list`` (lab 7). Harmless
#: (what gcc could build lands on a noexec tmpfs), and not a
#: reason to expect processes left after the run.
EVERY_LAB_PROGRAMS = ("uname", "ldconfig", "gcc", "ld", "fc-list")
#: Needs the sandbox meets with the engine broker.
ENGINE_NEEDS = frozenset({"docker"})
#: Processes and threads: a JVM or TensorFlow starts dozens of threads, and a pids limit counts them.
PIDS_WITH_PROGRAMS = 512
PIDS_WITHOUT = 64
DEFAULT_CELL_S = 120.0
#: The supervisor must end (and sign what it saw) before the host's own kill.
HOST_MARGIN_S = 20.0


@dataclass(frozen=True)
class LabPolicy:
    lab: str
    programs: tuple[str, ...] = ()
    fork: bool = False
    limits: Limits = Limits()
    engine: bool = False  # the sandbox gets the engine broker's socket (lab 2)

    def for_runner(self) -> dict:
        """The part of the plan the worker's audit hook applies."""
        from .engine_broker import SANDBOX_SOCKET_DIR, SOCKET_NAME

        processes = bool(self.programs) or self.fork
        return {"programs": sorted({*self.programs, *EVERY_LAB_PROGRAMS}), "fork": self.fork,
                "signals": processes, "processes": processes,
                "engine_sockets": [f"{SANDBOX_SOCKET_DIR}/{SOCKET_NAME}"] if self.engine else []}


def _manifest(folder: Path) -> dict:
    path = folder / "lab.toml"
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def policy_from_manifest(lab: str, manifest: dict) -> LabPolicy:
    needs = set(manifest.get("needs", [])) | set(manifest.get("optional", []))
    grading = manifest.get("grading", {})
    programs = sorted({program for need in needs for program in PROGRAMS_OF_NEED.get(need, ())}
                      | {str(p) for p in grading.get("programs", [])}
                      | set(UNDECLARED_PROGRAMS.get(lab, ())))
    fork = bool(grading.get("fork", False))
    budget = manifest.get("budget", {})
    # The budget is one student's notebook on 2 cores of its own; a grader runs several
    # sandboxes at once on shared cores, and a lab may say that it needs longer there.
    wall = float(grading.get("wall_s", budget.get("wall_s", 300)))
    tmpfs = int(grading.get("tmpfs_mib", Limits.tmpfs_mb))
    limits = Limits(
        memory_mb=int(budget.get("memory_mib", Limits.memory_mb)) + 2 * max(0, tmpfs - Limits.tmpfs_mb),
        tmpfs_mb=tmpfs,
        cpus=float(grading.get("cpus", Limits.cpus)),
        pids=int(grading.get("pids", PIDS_WITH_PROGRAMS if programs or fork else PIDS_WITHOUT)),
        wall_s=wall + HOST_MARGIN_S,
        cell_s=float(grading.get("cell_s", min(DEFAULT_CELL_S, wall))),
        nofile=4096 if programs or fork else 256,
    )
    engine = bool(needs & ENGINE_NEEDS)
    return LabPolicy(lab, tuple(programs), fork, limits, engine)


def lab_policy(course: Path, lab: str) -> LabPolicy:
    """The policy of ``lab``: its manifest in the course's ``solutions/``, else the repository's."""
    folder = course / "solutions" / lab
    if not (folder / "lab.toml").exists():
        from dlcloud_course.labs import SOLUTIONS

        folder = SOLUTIONS / lab
    return policy_from_manifest(lab, _manifest(folder))


def with_limits(policy: LabPolicy, **changes) -> LabPolicy:
    """The same policy with some limits changed (the command's --memory-mb and friends)."""
    return replace(policy, limits=replace(policy.limits, **changes))
