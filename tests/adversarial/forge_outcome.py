# expect: forged-outcome
# ruff: noqa -- written as a student would: this is the attack, not project code
# The worker reports each cell's outcome to the supervisor on a pipe: find that pipe
# among this process's file descriptors and write passes for every cell on it.
import json, os, stat
for fd in range(0, 256):
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            continue
    except OSError:
        continue
    for seq, cell in enumerate(range(40), start=3):
        line = {"kind": "end", "cell": cell, "status": "pass", "tamper": [], "line": None,
                "error": None, "seq": seq}
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        except OSError:
            break
