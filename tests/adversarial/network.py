# expect: network
# ruff: noqa -- written as a student would: this is the attack, not project code
# Ask DNS, then try to reach the internet.
import socket, urllib.request
for attempt in (lambda: socket.getaddrinfo("pypi.org", 443),
                lambda: urllib.request.urlopen("http://example.com", timeout=3),
                lambda: socket.create_connection(("1.1.1.1", 53), timeout=3)):
    try:
        attempt()
    except Exception:
        pass
