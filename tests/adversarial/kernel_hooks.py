# expect: suspicious-code, tampering
# ruff: noqa -- written as a student would: this is the attack, not project code
# Under nbgrader these lines made a stub-only notebook score full marks: they hide every
# error from the kernel's reply. Here there is no kernel, and changing sys hooks is tampering.
import sys
try:
    ip = get_ipython()  # noqa: F821
    ip.showtraceback = lambda *a, **k: None
    ip.input_transformers_cleanup.append(lambda lines: ["pass\n"])
except NameError:
    pass
sys.excepthook = lambda *args: None
sys.displayhook = lambda value: None
