# expect: leftover-process, pids-limit
# ruff: noqa -- written as a student would: this is the attack, not project code
# Start processes the way no audit event sees (_posixsubprocess.fork_exec), until the
# process table is full; they would outlive the notebook if nothing ended the container.
import _posixsubprocess
import os

started = 0
for _ in range(500):
    errpipe_read, errpipe_write = os.pipe()
    try:
        _posixsubprocess.fork_exec(
            [b"/bin/sleep", b"1000"], [b"/bin/sleep"], True, (), None, None,
            -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write,
            True, True, -1, None, None, None, -1, None, True)
        started += 1
    except OSError:
        break
    finally:
        os.close(errpipe_read)
        os.close(errpipe_write)
