# expect: output-limit, forged-outcome
# ruff: noqa -- written as a student would: this is the attack, not project code
# Flood the supervisor's pipe: a supervisor that buffers everything runs out of memory,
# one that stops reading lets the student's later lines be the only ones it sees.
import os, stat
for fd in range(0, 256):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            for _ in range(64):
                os.write(fd, b"x" * 65536)
    except OSError:
        continue
