# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# Stop the supervisor (the worker's parent) before it reports the failures, or stop
# every process in the container, or signal the container's init.
import os, signal
for attempt in (lambda: os.kill(os.getppid(), signal.SIGKILL),
                lambda: os.kill(os.getppid(), signal.SIGSTOP),
                lambda: os.killpg(0, signal.SIGTERM),
                lambda: os.kill(1, signal.SIGTERM),
                lambda: signal.pthread_kill(0, signal.SIGKILL)):
    try:
        attempt()
    except (PermissionError, OSError, ValueError):
        pass
