# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# Leave processes behind that would rewrite the grade after it was saved.
import os, subprocess, threading, time
try:
    subprocess.Popen(["sleep", "1000"], start_new_session=True)
except PermissionError:
    pass
try:
    if os.fork() == 0:
        time.sleep(1000)
except PermissionError:
    pass
threading.Thread(target=time.sleep, args=(1000,), daemon=False).start()
