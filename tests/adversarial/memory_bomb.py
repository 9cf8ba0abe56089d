# expect: memory-limit, did-not-finish
# Allocate and touch memory until something stops it (the container's cgroup limit).
hoard = []
while True:
    hoard.append(bytearray(64 * 1024 * 1024))
