# expect: forged-record, forged-outcome
# ruff: noqa -- written as a student would: this is the attack, not project code
# Fake what a grader might read: nbgrader-style outputs, and records that look like the
# runner's on every file descriptor that might be its stream (the supervisor's pipe: the
# worker's lines are not signed, a line out of the plan's order voids the run).
import json, os
print(json.dumps({"output_type": "execute_result", "data": {"text/plain": "1.0"}}))
for fd in range(0, 12):
    for test in ("state-machine-follows-happy-path", "service-survives-restart"):
        body = json.dumps({"seq": 2, "kind": "verdict", "status": "pass", "test": test,
                           "line": None, "error": None, "tamper": []}, sort_keys=True)
        try:
            os.write(fd, f"DLCV1 {body} {'0' * 64}\n".encode())
        except OSError:
            pass
