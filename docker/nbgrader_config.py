"""nbgrader's settings for students: /etc/jupyter/nbgrader_config.py in the course image,
~/.jupyter/nbgrader_config.py on Binder (binder/postBuild copies it there).

nbgrader reads every nbgrader_config.py on Jupyter's config path, and /etc/jupyter is
always on it: Validate uses these settings wherever a student opens a lab (a clone in
the home folder, a lab fetched from the exchange), not only in the course's root.
Nothing instructor-only belongs here: no gradebook, no source folder, no feedback.
"""

import os

c = get_config()  # noqa: F821 -- provided by nbgrader when it loads this file

c.CourseDirectory.course_id = "deep-learning-in-the-cloud"
# The exchange: a folder in the image, or the shared volume that a hub mounts over it.
# Binder has none (students hand in through the course's learning platform).
EXCHANGE = "/srv/nbgrader/exchange"
if os.path.isdir(EXCHANGE):
    c.Exchange.root = EXCHANGE

# The course's cell timeout, the value of LAB_CELL_TIMEOUT_S in the repository's
# nbgrader_config.py (a test checks they agree): heavy labs start Spark, TensorFlow,
# gRPC servers and Docker builds in one cell, which nbgrader's default of 30 s kills.
LAB_CELL_TIMEOUT_S = 900
c.Execute.timeout = LAB_CELL_TIMEOUT_S
c.ExecutePreprocessor.timeout = LAB_CELL_TIMEOUT_S
c.Execute.startup_timeout = 120

# What Validate recognises as an unanswered cell.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE\nraise NotImplementedError()",
}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
