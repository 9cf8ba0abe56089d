# expect: did-not-finish
# End the run before any test: a grader that counts "no failure" as a pass gives full marks.
import os
os._exit(0)
