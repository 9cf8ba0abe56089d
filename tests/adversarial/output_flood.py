# expect: output-limit
# ruff: noqa -- written as a student would: this is the attack, not project code
# Flood every stream: nbgrader once wrote a 50 MB feedback file from one print.
import os
print("x" * 50_000_000)
for fd in (0, 1, 2, 3, 4):
    try:
        for _ in range(64):
            os.write(fd, b"y" * 1_000_000)
    except OSError:
        pass
