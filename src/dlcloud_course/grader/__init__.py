"""Grading that a student's code cannot subvert (issue 11).

The pieces, in the order a submission goes through them:

- :mod:`.plan` reads a submission as JSON (never executes it), takes only the student's
  *solution* cells from it, restores every locked and test cell from the instructor's
  source, and flags cells that were edited or deleted;
- :mod:`.policy` reads what the lab may do from its ``lab.toml`` (programs, limits, or
  not sandboxable at all: lab 2);
- :mod:`.image` builds the grading image (lab 1: local base and a wheelhouse of its
  pins; the other labs: the course's full-lock environment), adds ``dlcloud`` and the
  runner, and prunes old ones;
- :mod:`.sandbox` runs one plan in one locked-down container and reads back only
  signed, size-capped verdict records;
- :mod:`.runner` is what runs inside the container (standard library only): a
  supervisor that holds the key and signs, and a worker, under another uid, that runs
  the cells;
- :mod:`.verdict` checks the records and turns them into scores, flags and feedback
  made only of what the instructor wrote;
- :mod:`.gradebook` writes scores to nbgrader's gradebook, autograded notebooks,
  feedback and ``flags.csv``, and re-scores to check the gradebook;
- ``python -m dlcloud_course.grader grade LAB`` ties them together (:mod:`.__main__`).

The design and the threat model are written down in ``docs/grading.md``.
"""
