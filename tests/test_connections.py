"""Idle and slow-header connections are closed (HEADER_TIMEOUT_S), each client address holds at
most MAX_CONNECTIONS_PER_IP, and the descriptor limit costs a few log lines, not a flood. The
servers run as users run them (`python main.py`, `uvicorn main:create_app --factory`)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx
import pytest
import uvicorn
import uvicorn.protocols.http
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server

import compat.uvicorn as compat
from conftest import ROOT, TEST_ENV, build_test_app, free_port, main_py_stop_line

HEAD = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


@contextlib.contextmanager
def serve(log: Path, argv: tuple[str, ...] = ("main.py",), nofile: int | None = None, **settings):
    """The server in its own process (its output in `log`); yields its port."""
    port = free_port()
    env = {**os.environ, **{k: str(v) for k, v in TEST_ENV.items() if k != "STUN_SERVERS"}, "STUN_SERVERS": "[]",
           "ICE_HOST_ADDRESSES": '["127.0.0.1"]', "SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1",
           **{k: str(v) for k, v in settings.items()}}
    if argv[0] != "main.py":
        argv = (*argv, "--host", "127.0.0.1", "--port", str(port))
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=limit)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            proc.wait(30)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece leaves when sent
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_response(s: socket.socket, timeout: float = 10) -> bytes:
    """One HTTP response (head and Content-Length body), or b"" if the server closed."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return data


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    """Whether the server closes `s` within `timeout` (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def refused(s: socket.socket, timeout: float) -> bool:
    """Whether the server closes `s` within `timeout` without answering anything."""
    s.settimeout(timeout)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def health(port: int, source: str = "127.0.0.1") -> bytes:
    with connect(port, source) as s:
        s.sendall(HEAD)
        return read_response(s)


def test_idle_connections_are_closed_at_the_header_timeout_with_a_few_log_lines(tmp_path):
    """300 silent or half-sent connections against 256 descriptors: all closed after
    HEADER_TIMEOUT_S, the descriptor limit logged in a line or two, then /health answers."""
    log = tmp_path / "server.log"
    with serve(log, nofile=256, HEADER_TIMEOUT_S=2, MAX_CONNECTIONS_PER_IP=1000) as port:
        lines_before = len(log.read_text().splitlines())
        open_ = []
        for i in range(300):
            s = connect(port)
            if i % 3 == 0:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: te")  # a request head that never ends
            s.setblocking(False)
            open_.append(s)
        with selectors.DefaultSelector() as sel:
            for s in open_:
                sel.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + 30  # expected: about 2 x HEADER_TIMEOUT_S + 1 s (accept retry)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    try:
                        data = key.fileobj.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", data  # nothing is answered to a request that never ended
                    sel.unregister(key.fileobj)
            still_open = len(sel.get_map())
        for s in open_:
            s.close()
        assert still_open == 0, f"{still_open} of 300 idle connections still open after 30 s"
        # the listening socket is retried about once a second
        wait_for_health(port, "/health does not answer once the idle connections are gone")
        new_lines = log.read_text().splitlines()[lines_before:]
    assert any("Too many open files" in line for line in new_lines), "the descriptor limit was not reached"
    assert len(new_lines) <= 10, "\n".join(new_lines[:40])
    assert not any("Traceback" in line for line in new_lines)


def wait_for_health(port: int, failure: str, tries: int = 100) -> None:
    for _ in range(tries):
        with contextlib.suppress(OSError):
            if health(port).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    pytest.fail(failure)


def test_a_client_address_holds_at_most_max_connections_per_ip(tmp_path):
    """With MAX_CONNECTIONS_PER_IP=5, the 6th connection from 127.0.0.1 is closed at once while
    127.0.0.2 is served; closing one of the five lets 127.0.0.1 in again."""
    with serve(tmp_path / "server.log", HEADER_TIMEOUT_S=30, MAX_CONNECTIONS_PER_IP=5) as port:
        held = []
        for _ in range(5):
            s = connect(port)
            s.sendall(HEAD)
            assert read_response(s).startswith(b"HTTP/1.1 200")  # accepted and counted
            s.sendall(b"GET /health HTTP/1.1\r\n")  # then held open by a half-sent head (30 s)
            held.append(s)
        sixth = connect(port)
        with contextlib.suppress(OSError):  # it may be closed already
            sixth.sendall(HEAD)
        assert refused(sixth, timeout=10), "the 6th connection from 127.0.0.1 was served"
        sixth.close()
        assert health(port, source="127.0.0.2").startswith(b"HTTP/1.1 200")
        held.pop().close()
        wait_for_health(port, "127.0.0.1 is still refused after one of its connections closed")
        for s in held:
            assert s.fileno() != -1 and not closed_by_server(s, timeout=0.01), "a held connection was closed"
            s.close()


def test_slow_complete_requests_keep_their_connection_and_stalled_heads_do_not(tmp_path):
    """Served by `uvicorn main:create_app --factory` with HEADER_TIMEOUT_S=0.5: a keep-alive client
    that sends each head in pieces and idles 1 s between requests is served on one connection
    (uvicorn's keep-alive, 5 s, then closes it); a head that stops half-way is closed, on a new
    connection and after a complete request on a kept-alive one."""
    argv = ("-m", "uvicorn", "main:create_app", "--factory")
    with serve(tmp_path / "server.log", argv=argv, HEADER_TIMEOUT_S=0.5) as port:
        stalled = connect(port)
        stalled.sendall(b"GET /health HTTP/1.1\r\n")
        stalled_later = connect(port)
        stalled_later.sendall(HEAD)
        assert read_response(stalled_later).startswith(b"HTTP/1.1 200")
        stalled_later.sendall(b"GET /health HTTP/1.1\r\n")

        client = connect(port)
        for _ in range(3):
            for piece in (HEAD[:10], HEAD[10:25], HEAD[25:]):  # 0.1 s for the head, 5x under the timeout
                client.sendall(piece)
                time.sleep(0.05)
            assert read_response(client).startswith(b"HTTP/1.1 200"), "a slow but complete request was cut"
            time.sleep(1.0)  # idle between requests: longer than HEADER_TIMEOUT_S, 5x under keep-alive
        assert closed_by_server(stalled, timeout=30), "a half-sent head was kept"
        assert closed_by_server(stalled_later, timeout=30), "a half-sent head after a request was kept"
        assert closed_by_server(client, timeout=30), "uvicorn's keep-alive timeout no longer applies"
        for s in (stalled, stalled_later, client):
            s.close()


# -- the self-check --------------------------------------------------------------------------
def test_the_pinned_uvicorn_is_the_one_installed_and_passes_the_check():
    pinned = re.search(r"^uvicorn==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert compat.PINNED == f"uvicorn=={pinned}" == f"uvicorn=={uvicorn.__version__}"
    compat.self_check()


async def _main_without_config(self):
    return None


async def _startup_without_protocol_lookup(self, sockets=None):
    return None


def _init_without_cycle(self, *args, **kwargs):
    return None


def _httptools_without_cycle(mp):
    fake = types.ModuleType("uvicorn.protocols.http.httptools_impl")
    fake.HttpToolsProtocol = type("HttpToolsProtocol", (), {"__init__": _init_without_cycle,
                                                            "on_headers_complete": _init_without_cycle})
    fake.RequestResponseCycle = type("RequestResponseCycle", (), {"__init__": _init_without_cycle})
    mp.setitem(sys.modules, fake.__name__, fake)
    mp.setattr(uvicorn.protocols.http, "httptools_impl", fake, raising=False)


REMOVALS = {
    "uvicorn.lifespan.on.LifespanOn.main": lambda mp: mp.setattr(LifespanOn, "main", _main_without_config),
    "uvicorn.server.Server.startup.create_protocol":
        lambda mp: mp.setattr(Server, "startup", _startup_without_protocol_lookup),
    "uvicorn.protocols.http.h11_impl.H11Protocol.cycle": lambda mp: mp.setattr(H11Protocol, "__init__",
                                                                               _init_without_cycle),
    "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol.cycle": _httptools_without_cycle,
}


@pytest.mark.parametrize("case", list(REMOVALS))
def test_a_missing_uvicorn_internal_stops_start_up_with_one_line(monkeypatch, case):
    REMOVALS[case](monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        build_test_app()
    message = str(stopped.value.code)
    assert len(message.splitlines()) == 1
    assert case in message and "uvicorn==0.54.0" in message


def test_every_uvicorn_internal_is_checked():
    assert set(compat.INTERNALS) == set(REMOVALS)


def test_python_main_prints_one_line_and_exits_on_a_changed_uvicorn():
    line = main_py_stop_line("import uvicorn.server; del uvicorn.server.Server.startup")
    assert "Server.startup" in line and "uvicorn==0.54.0" in line


async def test_outside_uvicorn_the_limits_are_skipped_with_a_warning(caplog):
    installed = compat.install(header_timeout=1, max_per_address=1)
    try:
        assert installed.limits is None
        assert "not served by uvicorn" in caplog.text
    finally:
        installed.uninstall()
