# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# Skip the lines of every test with a trace function that jumps to the end of the cell.
import sys
def skip(frame, event, arg):
    if frame.f_code.co_filename.startswith("<test:") and event == "line":
        frame.f_lineno = frame.f_code.co_firstlineno
    return skip
try:
    sys.settrace(skip)
except PermissionError:
    pass
