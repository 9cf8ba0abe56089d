# expect: refused-call
# ruff: noqa -- written as a student would: this is the attack, not project code
# Native code in the runner's process could read the signing key from memory. Load a C
# extension from a writable place (a copy of one from the image stands in for a crafted
# one): from /tmp, and from an anonymous memfd, which no mount option covers.
import glob
import importlib.machinery
import importlib.util
import os
import shutil

original = (glob.glob("/usr/lib/python3.11/lib-dynload/_json*.so")
            + glob.glob(f"{os.path.dirname(os.__file__)}/lib-dynload/_json*.so"))[0]
places = []
try:
    shutil.copy(original, "/tmp/_json.cpython-311-x86_64-linux-gnu.so")
    places.append("/tmp/_json.cpython-311-x86_64-linux-gnu.so")
except OSError:
    pass
try:
    fd = os.memfd_create("native")
    with open(original, "rb") as source:
        os.write(fd, source.read())
    places.append(f"/proc/self/fd/{fd}")
except OSError:
    pass
for place in places:
    try:
        loader = importlib.machinery.ExtensionFileLoader("_json", place)
        spec = importlib.util.spec_from_file_location("_json", place, loader=loader)
        importlib.util.module_from_spec(spec)
    except (PermissionError, ImportError, OSError):
        pass
