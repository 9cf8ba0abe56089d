# expect: did-not-finish
# ruff: noqa -- written as a student would: this is the attack, not project code
# End the run before any test: a grader that counts "no failure" as a pass gives full marks.
import os
os._exit(0)
