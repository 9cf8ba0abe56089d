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
