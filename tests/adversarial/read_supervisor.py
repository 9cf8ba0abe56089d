# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# The supervisor (another uid) holds the key and the hidden tests: read its memory, its
# environment, its open files, or anything its uid owns.
import os
parent = os.getppid()
for path in (f"/proc/{parent}/mem", f"/proc/{parent}/environ",
             f"/proc/{parent}/fd/0", f"/proc/{parent}/maps", "/proc/1/environ"):
    try:
        with open(path, "rb") as handle:
            handle.read(64)
    except OSError:
        pass
try:
    os.listdir(f"/proc/{parent}/fd")
except OSError:
    pass
