# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# The classic: every process forks again. Refused in Python; the pids limit is the backstop.
import os
for _ in range(1000):
    try:
        os.fork()
    except (PermissionError, OSError):
        break
