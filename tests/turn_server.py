"""Debian's coturn (`turnserver`) on a loopback port, for tests: REST-API auth (a shared secret),
loopback peers allowed, no TLS/DTLS, no CLI; everything it writes stays in `workdir`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

BINARY = "turnserver"


def free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def available() -> bool:
    return shutil.which(BINARY) is not None


def _binding_request() -> bytes:
    # STUN Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)


class TurnServer:
    REALM = "vg"

    def __init__(self, workdir: Path, secret: str) -> None:
        self.workdir = workdir
        self.secret = secret
        self.port = free_udp_tcp_port()
        self.log = workdir / "turnserver.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    def start(self, ready_within_s: float = 30.0) -> None:
        args = [BINARY, "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
                "--listening-port", str(self.port), "--allow-loopback-peers",
                "--use-auth-secret", "--static-auth-secret", self.secret, "--realm", self.REALM,
                "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780", "-v",
                "--pidfile", str(self.workdir / "turnserver.pid"), "--userdb", str(self.workdir / "turndb"),
                "--log-file", "stdout", "--simple-log"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(ready_within_s)

    def _wait_ready(self, within_s: float) -> None:
        """Until it answers a STUN Binding request on its port (a generous limit: start-up on a
        busy box, never a measurement)."""
        deadline = time.monotonic() + within_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"turnserver exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"turnserver did not answer on {self.port}: {self.log_text()[-2000:]}")
                try:
                    s.sendto(_binding_request(), ("127.0.0.1", self.port))
                    data, _ = s.recvfrom(2048)
                    if data[:2] == b"\x01\x01":  # Binding success response
                        return
                except OSError:  # timeout, or refused while it is not yet bound
                    pass

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
