# expect: suspicious-code
# ruff: noqa -- written as a student would: this is the attack, not project code
# Overwrite another student's submission and the stored test cells.
import glob
for path in glob.glob("/home/**/submitted/*/lab1-bpaas/*.ipynb", recursive=True) + glob.glob("/srv/**/submitted/*/*/*.ipynb", recursive=True):
    try:
        open(path, "w").write("{}")
    except OSError:
        pass
