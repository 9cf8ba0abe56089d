"""nbgrader configuration of the course.

Instructors author labs as text in ``solutions/<lab>/``; ``make labs`` renders them
into ``build/source/<lab>/`` (the nbgrader *source*, ignored by git) and writes the
student versions to ``labs/<lab>/`` (the nbgrader *release*), which are committed. Everything that holds students' work or grades lives outside git, under
``.nbgrader/`` by default, or wherever ``DLCLOUD_GRADING_DIR`` points.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 -- provided by nbgrader when it loads this file

COURSE_ROOT = Path(__file__).resolve().parent
GRADING_DIR = Path(os.environ.get("DLCLOUD_GRADING_DIR", COURSE_ROOT / ".nbgrader"))
if not GRADING_DIR.is_absolute():
    GRADING_DIR = COURSE_ROOT / GRADING_DIR
GRADING_DIR.mkdir(parents=True, exist_ok=True)


def _from_root(path: Path) -> str:
    # nbgrader joins these to the course root and parses them back with a regex,
    # so we hand it paths relative to the root (".." is allowed).
    return os.path.relpath(path, COURSE_ROOT)


c.CourseDirectory.course_id = "deep-learning-in-the-cloud"
c.CourseDirectory.root = str(COURSE_ROOT)
c.CourseDirectory.source_directory = "build/source"  # rendered by `make labs`
c.CourseDirectory.release_directory = "labs"
c.CourseDirectory.submitted_directory = _from_root(GRADING_DIR / "submitted")
c.CourseDirectory.autograded_directory = _from_root(GRADING_DIR / "autograded")
c.CourseDirectory.feedback_directory = _from_root(GRADING_DIR / "feedback")
c.CourseDirectory.db_url = f"sqlite:///{GRADING_DIR / 'gradebook.db'}"

# Every other grading file stays in the grading folder too, never in the git tree.
# The exchange (release, fetch, submit, collect) defaults to one for use on this machine;
# on a JupyterHub point DLCLOUD_EXCHANGE_DIR at the exchange shared with the students.
c.Exchange.root = os.environ.get("DLCLOUD_EXCHANGE_DIR", str(GRADING_DIR / "exchange"))
c.CsvExportPlugin.to = str(GRADING_DIR / "grades.csv")
# zip_collect formats its paths after joining them to the root: a relative path is needed.
c.ZipCollectApp.downloaded_directory = _from_root(GRADING_DIR / "downloaded")
# zip_collect: an LMS's download of all submissions, unzipped into
# downloaded/<lab>/archive/. Canvas names each file <login>[_LATE]_<user id>_<file id>_
# <name as uploaded>[-<n> for a re-upload]; students upload the notebook under its own
# name (lab1-bpaas.ipynb). For another LMS, change this one pattern.
c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<student_id>[^_/]+)(?:_LATE)?_[0-9]+_[0-9]+_(?P<file_id>[^/]+?)(?:-[0-9]+)?\.ipynb$"
)

# The one place for cell timeouts: heavy labs start Spark, TensorFlow, gRPC servers
# and Docker builds in a single cell, so a cell may take minutes on 2 cores.
LAB_CELL_TIMEOUT_S = 900
c.Execute.timeout = LAB_CELL_TIMEOUT_S
c.ExecutePreprocessor.timeout = LAB_CELL_TIMEOUT_S
c.Execute.startup_timeout = 120

# Students see this where their code goes.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE\nraise NotImplementedError()",
}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Feedback must never show hidden tests, neither their code nor their tracebacks.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from dlcloud_course.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
c.HideHiddenTests.enforce_metadata = False

# Autograde warns about a changed locked cell only when a student really changed one,
# not for every cell whose hidden tests the release left out (see dlcloud_course.checksums).
from dlcloud_course.checksums import sanitize_preprocessors

c.Autograde.sanitize_preprocessors = sanitize_preprocessors()
