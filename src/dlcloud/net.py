"""Loopback networking helpers: every server in the course binds 127.0.0.1."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

__all__ = ["LOOPBACK", "free_port", "wait_for_http"]

# Where every server of the course listens: loopback only, never an outside address.
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 30.0, interval_s: float = 0.2) -> None:
    """Poll ``url`` until it answers 200, or raise ``TimeoutError`` naming the last error."""
    deadline = time.monotonic() + timeout_s
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last_error})")
