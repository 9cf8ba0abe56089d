# expect: memory-limit, did-not-finish
# ruff: noqa -- written as a student would: this is the attack, not project code
# Allocate and touch memory until something stops it (the container's cgroup limit).
hoard = []
while True:
    hoard.append(bytearray(64 * 1024 * 1024))
