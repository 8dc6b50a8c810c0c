"""Real cluster nodes for tests: `python main.py` processes on one Redis, each on its own port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx

from redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {"STUN_SERVERS": [], "ICE_HOST_ADDRESSES": ["127.0.0.1"], "SERVER_HOST": "127.0.0.1", "DEFAULT_MODEL": "none",
       "EVENTS_FILE": "", "SESSION_TTL_S": 3, "DEBUG_MODE": False, "SATURATION_LAG_S": 0}


class Node:
    def __init__(self, name: str, redis_url: str, tmp: Path, **settings) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**ENV, "REDIS_URL": redis_url, "NODE_ID": name, "SERVER_PORT": self.port,
               "RECORDINGS_DIR": str(tmp / "recordings"), **settings}
        self.env = {**os.environ, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}}
        self.log = tmp / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Node":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60.0) -> "Node":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {self.name} did not start:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: nothing gets to clean up (what a crash or the OOM killer does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_nodes(redis_url: str, tmp: Path, count: int = 2, **settings) -> list[Node]:
    nodes = [Node(f"node-{chr(97 + i)}", redis_url, tmp, **settings).start() for i in range(count)]
    try:
        for node in nodes:
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def info(node: Node) -> dict:
    return httpx.get(node.url + "/info", timeout=10).json()
