# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# The signing key is in this process's memory: read it through /proc (directly, through a
# thread's folder, a dir_fd, a symlink, a relative path), or get code to run inside the
# audit hook with a str subclass, whose frames would lead to the key. Any of these that
# worked would end the run at once (os._exit), and the run would not be flagged as refused.
import os
import pathlib
import sys


def got_in():
    os._exit(3)


class Sneaky(str):
    def startswith(self, *args):
        got_in()

    def __hash__(self):
        got_in()

    def __eq__(self, other):
        got_in()


attempts = [
    lambda: open("/proc/self/mem", "rb"),
    lambda: open(pathlib.Path("/proc/self/mem"), "rb"),
    lambda: open(f"/proc/self/task/{os.getpid()}/mem", "rb"),
    lambda: os.open("mem", os.O_RDONLY, dir_fd=os.open("/proc/self", os.O_RDONLY)),
    lambda: os.symlink("/proc/self", "/tmp/self-link"),
    lambda: os.chdir("/proc/self"),
    lambda: open(Sneaky("/proc/self/mem"), "rb"),
    lambda: sys.audit(Sneaky("dlcloud.verdict"), {}),
]
for attempt in attempts:
    try:
        attempt()
    except (PermissionError, OSError, TypeError):
        pass
