# expect: suspicious-code
# Look for the instructor's sources and hidden tests, and the gradebook, to print them.
import glob
found = []
for pattern in ("/work/**/solutions/**/*.ipynb", "/**/gradebook.db", "../../solutions/*/*.ipynb",
                "/**/nbgrader_config.py"):
    found += glob.glob(pattern, recursive=True)
for path in found[:20]:
    try:
        print(open(path, errors="replace").read()[:100000])
    except OSError:
        pass
