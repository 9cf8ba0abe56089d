# expect: forged-verdict
# ruff: noqa -- written as a student would: this is the attack, not project code
# Reach the runner's own report() through the stack and ask it to sign passes.
import sys
frame = sys._getframe()
while frame is not None and "report" not in frame.f_globals:
    frame = frame.f_back
if frame is not None:
    report = frame.f_globals["report"]
    for test in ("state-machine-follows-happy-path", "state-machine-refuses-illegal-transition"):
        try:
            report("verdict", {"test": test, "status": "pass", "tamper": [], "line": None, "error": None})
        except PermissionError:
            pass
