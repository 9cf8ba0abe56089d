"""The same sandbox as Kubernetes Jobs: one Job per submission, a NetworkPolicy, no API token.

Each Job runs the grading image's runner with the sandbox's limits as resource limits
(requests equal limits: the scheduler reserves what a submission may use), started as
root with only SETUID and SETGID (the supervisor starts the worker as uid 1000, then
becomes uid 1001; no capability is left once a cell can run: Pod Security "baseline",
not "restricted"), with a read-only root, no privilege escalation, the runtime's
seccomp profile, ``emptyDir`` volumes of bounded size in memory for ``/tmp`` and the
home, no service-account token and no service environment variables. The container
keeps its stdin open once (``stdinOnce``): the grader attaches, sends the per-submission
key and plan exactly as with Docker, and reads the signed records from the pod's log
(``limitBytes``), so neither the key nor the hidden tests are ever an API object.
The NetworkPolicy selects every sandbox pod and allows no ingress and no egress (DNS
included). Pids are limited per node by the kubelet (``podPidsLimit``), not per pod.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .image import RUNNER_PATH, VENV_PYTHON
from .sandbox import SANDBOX_ENVIRONMENT, Limits

SANDBOX_POD_LABEL = "dlcloud.grader/sandbox"


def _name(text: str, limit: int = 52) -> str:
    """A DNS-1123 label from a student id (lower case, digits and dashes)."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return (cleaned or "student")[:limit].rstrip("-")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def network_policy(namespace: str) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "dlcloud-grader-deny-all", "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": {SANDBOX_POD_LABEL: "1"}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }


def job(student: str, lab: str, image: str, limits: Limits, namespace: str) -> dict:
    """One submission's Job: the Docker sandbox's settings in Kubernetes' words."""
    resources = {"cpu": f"{int(limits.cpus * 1000)}m", "memory": f"{limits.memory_mb}Mi",
                 "ephemeral-storage": f"{limits.tmpfs_mb * 2 + 16}Mi"}
    labels = {SANDBOX_POD_LABEL: "1", "dlcloud.grader/lab": _name(lab),
              "dlcloud.grader/student": f"{_name(student, 54)}-{_digest(student)}"}
    scratch = {"medium": "Memory", "sizeLimit": f"{limits.tmpfs_mb}Mi"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        # The hash keeps two ids that clean up alike ("Bob_S", "bob-s") apart.
        "metadata": {"name": f"grade-{_name(lab, 20)}-{_name(student, 24)}-{_digest(student)}",
                     "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a submission that crashes is graded as it crashed, once
            "activeDeadlineSeconds": int(limits.wall_s),
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "hostNetwork": False, "hostPID": False, "hostIPC": False,
                    "shareProcessNamespace": False,
                    "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "sandbox", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": [VENV_PYTHON, "-I", RUNNER_PATH, "--split-uids"],
                        "stdin": True, "stdinOnce": True, "tty": False,
                        "workingDir": "/home/student",
                        "env": [{"name": name, "value": value}
                                for name, value in SANDBOX_ENVIRONMENT.items()],
                        "resources": {"limits": resources, "requests": resources},
                        "securityContext": {"readOnlyRootFilesystem": True,
                                            "allowPrivilegeEscalation": False,
                                            "privileged": False,
                                            "capabilities": {"drop": ["ALL"],
                                                             "add": ["SETUID", "SETGID"]}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "home", "mountPath": "/home/student"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": scratch},
                                {"name": "home", "emptyDir": scratch}],
                },
            },
        },
    }


def write_manifests(out: Path, lab: str, students: list[str], image: str, limits: Limits,
                    namespace: str = "dlcloud-grading") -> list[Path]:
    """One file for the NetworkPolicy, one per Job (JSON is YAML). Returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "network-policy.json"]
    paths[0].write_text(json.dumps(network_policy(namespace), indent=1))
    for student in students:
        manifest = job(student, lab, image, limits, namespace)
        path = out / f"{manifest['metadata']['name']}.json"
        path.write_text(json.dumps(manifest, indent=1))
        paths.append(path)
    return paths


# --- grading on a live cluster ------------------------------------------------------------

class ClusterError(RuntimeError):
    """kubectl failed, or a Job did not start or finish in time."""


def _kubectl(args: list[str], stdin: bytes | None = None, timeout_s: float = 120) -> bytes:
    import subprocess

    from dlcloud.kube import tool_path

    try:
        done = subprocess.run([tool_path("kubectl"), *args], input=stdin, capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"kubectl {' '.join(args[:3])} did not return within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args[:3])}: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def _pod_of(name: str, namespace: str, timeout_s: float) -> dict:
    """The Job's pod once its container runs (it waits for the plan on stdin)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pods = json.loads(_kubectl(["get", "pods", "-n", namespace, "-l", f"job-name={name}",
                                    "-o", "json"]))["items"]
        if pods:
            pod = pods[-1]
            if pod["status"].get("phase") in ("Running", "Succeeded", "Failed"):
                return pod
        time.sleep(1)
    raise ClusterError(f"the pod of Job {namespace}/{name} did not start within {timeout_s:.0f} s "
                       "(is the grading image in the cluster's registry?)")


def _finished(name: str, namespace: str, timeout_s: float) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads(_kubectl(["get", "job", name, "-n", namespace, "-o", "json"]))["status"]
        if status.get("succeeded") or status.get("failed"):
            return status
        time.sleep(1)
    return {}


def cluster_backend(lab: str, image: str, namespace: str, start_timeout_s: float = 300):
    """A grading backend (see ``gradebook.sandbox_of``) that runs each sandbox as a Job.

    The same plan payload as the Docker sandbox goes to the container's stdin through
    ``kubectl attach -i`` (stdin closed once sent: ``stdinOnce``), the signed records come
    back from ``kubectl logs --limit-bytes``; the Job is deleted afterwards. Everything
    the host decides (verification, scores, feedback) is the same code as with Docker.
    """
    import time

    from .sandbox import SandboxResult, plan_payload

    _kubectl(["apply", "-f", "-"], json.dumps(network_policy(namespace)).encode())

    def run(student, plan_cells, key, limits, policy, files):
        manifest = job(student, lab, image, limits, namespace)
        name = manifest["metadata"]["name"]
        started = time.monotonic()
        flags: list[tuple[str, str]] = []
        output, exit_code = b"", None
        try:
            _kubectl(["delete", "job", name, "-n", namespace, "--ignore-not-found", "--wait=true"])
            _kubectl(["create", "-f", "-"], json.dumps(manifest).encode())
            pod = _pod_of(name, namespace, start_timeout_s)
            payload = plan_payload(plan_cells, key, limits, policy, files)
            _kubectl(["attach", "-i", "-q", "-n", namespace, pod["metadata"]["name"], "-c", "sandbox"],
                     payload, timeout_s=limits.wall_s + 30)
            status = _finished(name, namespace, limits.wall_s + 30)
            output = _kubectl(["logs", "-n", namespace, f"job/{name}",
                               f"--limit-bytes={limits.output_bytes}"])
            terminated = _terminated(name, namespace)
            exit_code = terminated.get("exitCode")
            if terminated.get("reason") == "OOMKilled":
                flags.append(("memory-limit", f"killed at the memory limit of {limits.memory_mb} MB"))
            if any(c.get("reason") == "DeadlineExceeded" for c in status.get("conditions", [])) or not status:
                flags.append(("timeout", f"still running after {limits.wall_s:.0f} s"))
            if len(output) >= limits.output_bytes:
                flags.append(("output-limit", f"wrote more than {limits.output_bytes} bytes"))
        except ClusterError as error:
            flags.append(("engine-error", str(error)[:300]))
        finally:
            try:
                _kubectl(["delete", "job", name, "-n", namespace, "--ignore-not-found", "--wait=false",
                          "--cascade=foreground"])
            except ClusterError:
                pass
        return SandboxResult(output, exit_code, time.monotonic() - started, flags)

    return run


def _terminated(name: str, namespace: str) -> dict:
    pods = json.loads(_kubectl(["get", "pods", "-n", namespace, "-l", f"job-name={name}",
                                "-o", "json"]))["items"]
    for pod in pods[-1:]:
        for status in pod["status"].get("containerStatuses", []):
            return status.get("state", {}).get("terminated") or {}
    return {}
