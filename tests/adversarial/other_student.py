# expect: suspicious-code
# Overwrite another student's submission and the stored test cells.
import glob
for path in glob.glob("/**/submitted/*/lab1-bpaas/*.ipynb", recursive=True):
    try:
        open(path, "w").write("{}")
    except OSError:
        pass
