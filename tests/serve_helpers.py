"""`mailer serve` as a real subprocess on a loopback port, for tests that need another process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(config_path: Path, port: int) -> subprocess.Popen[str]:
    """`mailer serve` in a subprocess, once /healthz answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as health:
                assert health.status == 200
            return server
        except (urllib.error.URLError, ConnectionError):
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "mailer serve did not start"
            time.sleep(0.1)


def stop_serve(server: subprocess.Popen[str]) -> str:
    """Stop it as systemd does and return what it printed."""
    server.terminate()
    output, _ = server.communicate(timeout=15)
    return output
