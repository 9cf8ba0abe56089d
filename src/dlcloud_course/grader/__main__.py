"""``python -m dlcloud_course.grader grade LAB [--workers N]``: grade every collected submission.

Prints one line per student (score and flags), writes the gradebook, autograded
notebooks, feedback and ``flags/<lab>.csv``, then checks that the gradebook equals a
recomputation from the stored results and that no sandbox is left. Exit status 1 when
that check fails, 0 otherwise (flags are for the instructor, not errors).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from . import image as grading_image
from .gradebook import Lab, grade_lab, rescore_differences
from .sandbox import leftovers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlcloud_course.grader")
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("grade", help="grade every collected submission of a lab")
    grade.add_argument("lab")
    grade.add_argument("--workers", type=int, default=1, help="sandboxes at once")
    grade.add_argument("--course", type=Path, default=Path.cwd(), help="course root")
    grade.add_argument("--image", help="grading image to use instead of building one")
    grade.add_argument("--base", help="image to build FROM (default: DLCLOUD_BASE_IMAGE)")
    grade.add_argument("--kubernetes", action="store_true",
                       help="run each sandbox as a Job on the cluster KUBECONFIG names (needs "
                            "--image: the grading image as the cluster pulls it)")
    grade.add_argument("--namespace", default="dlcloud-grading", help="with --kubernetes")
    grade.add_argument("--full-lock", action="store_true",
                       help="grade in the full-lock image (FROM the course's environment stage)")
    # Defaults: the lab's policy (lab.toml's budget and [grading]); these override it.
    grade.add_argument("--memory-mb", type=int)
    grade.add_argument("--cpus", type=float)
    grade.add_argument("--pids", type=int)
    grade.add_argument("--wall-s", type=float, help="the whole notebook (host's kill)")
    grade.add_argument("--cell-s", type=float, help="one cell (the supervisor's kill)")
    grade.add_argument("--keep-images", type=int, default=3,
                       help="dlcloud/grader:<digest> images to keep (older ones are pruned)")
    prune = commands.add_parser("prune", help="remove old dlcloud/grader:<digest> images")
    prune.add_argument("--keep", type=int, default=3)
    manifests = commands.add_parser("k8s", help="write Kubernetes Job manifests for a lab")
    manifests.add_argument("lab")
    manifests.add_argument("--course", type=Path, default=Path.cwd(), help="course root")
    manifests.add_argument("--out", type=Path, required=True, help="folder for the manifests")
    manifests.add_argument("--image", required=True, help="grading image, as the cluster names it")
    manifests.add_argument("--namespace", default="dlcloud-grading")
    return parser


def write_kubernetes(args) -> int:
    from .kubernetes import write_manifests
    from .policy import lab_policy

    lab = Lab.at(args.course.resolve(), args.lab)
    policy = lab_policy(lab.course, lab.name)
    if policy.engine:
        print(f"{lab.name} builds images: its sandbox needs the engine broker next to a Docker "
              "Engine, which a Job does not have; grade it with Docker", file=sys.stderr)
        return 2
    paths = write_manifests(args.out, lab.name, lab.students(), args.image, policy.limits,
                            namespace=args.namespace)
    print(f"wrote {len(paths)} manifests to {args.out} (validate: kubernetes-validate --strict)")
    return 0


def _limits(args, policy):
    from .policy import with_limits

    changes = {name: getattr(args, name) for name in ("memory_mb", "cpus", "pids", "wall_s", "cell_s")
               if getattr(args, name) is not None}
    return with_limits(policy, **changes)


def grade_on_cluster(args, lab: Lab, policy) -> int:
    """``grade --kubernetes``: the same grading, each sandbox a Job on the live cluster."""
    from dlcloud import kube

    from .kubernetes import cluster_backend

    if policy.engine:
        print(f"{lab.name} builds images: grade it with Docker (its engine broker needs one)",
              file=sys.stderr)
        return 2
    if not args.image:
        print("--kubernetes needs --image: the grading image as the cluster's nodes pull it "
              "(build it here, push it to the cluster's registry)", file=sys.stderr)
        return 2
    cluster, why_not = kube.cluster_or_reason()
    if cluster is None:
        print(f"no Kubernetes cluster to grade on: {why_not}", file=sys.stderr)
        return 3
    print(f"grading {lab.name} on {cluster.context} ({cluster.host}, {cluster.version}), "
          f"namespace {args.namespace}")
    started = time.monotonic()
    graded = grade_lab(None, args.image, lab, workers=args.workers, limits=policy.limits,
                       policy=policy, backend=cluster_backend(lab.name, args.image, args.namespace))
    return _report(lab, graded, args.workers, time.monotonic() - started, [])


def _report(lab: Lab, graded, workers: int, elapsed: float, left: list[str]) -> int:
    for result in graded:
        flags = "; ".join(f"{reason}: {detail}" for reason, detail in result.flags) or "-"
        print(f"{result.student}\t{result.total:g}\t{flags}")
    print(f"graded {len(graded)} submissions of {lab.name} in {elapsed:.1f} s "
          f"with {workers} worker(s); flags in {lab.grading_dir / 'flags' / (lab.name + '.csv')}")
    problems = rescore_differences(lab)
    for problem in problems:
        print(f"RE-SCORE MISMATCH: {problem}", file=sys.stderr)
    if left:
        print(f"SANDBOXES LEFT BEHIND: {', '.join(left)}", file=sys.stderr)
    return 1 if problems or left else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "k8s":
        return write_kubernetes(args)
    from dlcloud import docker_engine

    from .policy import lab_policy

    if args.command == "prune":
        removed = grading_image.prune_grading_images(docker_engine.connect(), keep=args.keep)
        print(f"removed {len(removed)} old grading images: {' '.join(removed) or '-'}")
        return 0
    lab = Lab.at(args.course.resolve(), args.lab)
    policy = _limits(args, lab_policy(lab.course, lab.name))
    if args.kubernetes:
        return grade_on_cluster(args, lab, policy)
    client = docker_engine.connect()
    # Lab 1 has a small image of its own (built in a minute); the others need the lock.
    small = grading_image.SMALL_IMAGES.get(lab.name)
    image = args.image or grading_image.build_grading_image(
        client, packages=None if args.full_lock or small is None else small, base=args.base)
    if not args.image:
        grading_image.prune_grading_images(client, keep=args.keep_images, also_keep=(image,))
    if policy.engine and args.workers > 1:
        print(f"{lab.name} builds images: graded one submission at a time (the engine's build "
              "cache is shared; see docs/grading.md)", file=sys.stderr)
    run = uuid.uuid4().hex[:12]
    started = time.monotonic()
    graded = grade_lab(client, image, lab, workers=args.workers, limits=policy.limits,
                       labels={"dlcloud.grader.batch": run}, policy=policy)
    elapsed = time.monotonic() - started
    return _report(lab, graded, args.workers, elapsed, leftovers(client, f"dlcloud.grader.batch={run}"))


if __name__ == "__main__":
    sys.exit(main())
