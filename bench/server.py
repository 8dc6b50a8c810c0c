"""Start `python main.py` in its own process (loopback ICE, no STUN), for benchmarks and for
the tests that run the server as a user does."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until `url`/health answers; False if the process ended or `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            return True
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextlib.contextmanager
def server(log: Path | None = None, **settings):
    """Yields (base URL, Popen). Settings are env vars; lists/maps given as JSON strings.
    With `log`, the server's output (banner included) goes to that file."""
    port = free_port()
    env = {**os.environ, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "STUN_SERVERS": "[]",
           "ICE_HOST_ADDRESSES": '["127.0.0.1"]', "PYTHONUNBUFFERED": "1",
           **{k: str(v) for k, v in settings.items()}}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, proc, 60):
            raise RuntimeError("server did not start" + (f": {log.read_text()}" if log else ""))
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)
        if log:
            out.close()
