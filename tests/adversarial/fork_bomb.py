# expect: refused-call
# The classic: every process forks again. Refused in Python; the pids limit is the backstop.
import os
for _ in range(1000):
    try:
        os.fork()
    except (PermissionError, OSError):
        break
