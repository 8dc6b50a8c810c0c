"""The event stream and a server's shutdown: uvicorn waits for open responses before it stops,
so a stream must end when the server shuts down (and not before), and no connection, even one
uvicorn's own pass missed, may hold the shutdown (compat/asgi.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import build_test_app, running_server
from sse_client import SseClient
from test_events import wait_until


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_an_open_stream_does_not_hold_the_shutdown_and_stays_open_until_then(http):
    """uvicorn waits for open responses before it stops; the stream ends when it is asked to,
    and not before: also for `Connection: close` requests (nginx's default to upstreams speaks
    HTTP/1.0), for which httptools marks the request not keep-alive from the start."""
    async with running_server(http=http) as (url, svc):
        sse = SseClient(url, "/api/events/stream")
        closing = SseClient(url, "/api/events/stream", headers={"Connection": "close"})
        await sse.__aenter__()
        await closing.__aenter__()
        assert await wait_until(lambda: len(svc.events.subscribers) == 2, 15)
        await asyncio.sleep(1.5)  # the stream checks for a shutdown every CLOSING_POLL_S
        event = await svc.events.emit("default", "person_seen", 1)
        for client in (sse, closing):
            assert await client.wait_for(lambda ev: any(e["id"] == event["id"] for e in ev), 15), client.path
            assert not client.ended
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10
    for client in (sse, closing):
        assert await client.wait_for(lambda ev: False, 5) is False and client.ended
        await client.close()


async def _come_back_until_closed(reader, writer, request: bytes) -> int:
    """What EventSource does on one keep-alive connection: each time the stream ends, ask again
    on the same connection. Returns how many times the stream ended before the server closed it."""
    ends = 0
    seen = b""
    try:
        while chunk := await reader.read(65536):
            seen += chunk
            if seen.endswith(b"0\r\n\r\n"):  # the end of a chunked response: the stream ended
                ends, seen = ends + 1, b""
                await asyncio.sleep(0.2)  # EventSource waits `retry`; uvicorn's keep-alive timeout is 5 s
                writer.write(request)
    except ConnectionError:
        pass
    writer.close()
    return ends


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_client_back_on_a_connection_uvicorn_never_told_does_not_hold_the_shutdown(monkeypatch, http):
    """asyncio makes a connection's protocol a few loop turns after the accept, so uvicorn's one
    pass of `shutdown()` misses a connection accepted as the shutdown begins. Its stream still
    ends (the server's state is marked), but a client that comes back on the same keep-alive
    connection (a browser's EventSource did, and held a CI run's shutdown for 30 s) would keep it
    open for good. The server's shutdown tells such connections itself: the connection closes."""
    from uvicorn.protocols.http import h11_impl, httptools_impl

    protocol = h11_impl.H11Protocol if http == "h11" else httptools_impl.HttpToolsProtocol
    told = protocol.shutdown  # compat.asgi's marking wrapper around uvicorn's
    missed: set[int] = set()

    def shutdown(self) -> None:
        if id(self) not in missed:  # uvicorn's own pass misses it, as it misses a late connection
            missed.add(id(self))
            return
        told(self)

    request = b"GET /api/events/stream HTTP/1.1\r\nHost: test\r\n\r\n"
    async with running_server(http=http) as (url, svc):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(request)
        assert await wait_until(lambda: len(svc.events.subscribers) == 1, 15)
        monkeypatch.setattr(protocol, "shutdown", shutdown)
        client = asyncio.create_task(_come_back_until_closed(reader, writer, request))
    # running_server has shut down (it fails after 30 s if the connection held it)
    assert missed and await asyncio.wait_for(client, 10) >= 1  # the stream ended, then the connection closed


async def test_a_connection_that_fails_to_close_leaves_no_other_untold(caplog):
    """The shutdown's pass over late connections tells each one once; one whose `shutdown()`
    raises is logged and the rest are still told."""
    from uvicorn.server import ServerState

    from compat.asgi import LATE_POLL_S, _close_connections

    class Connection:
        def __init__(self, fails: bool) -> None:
            self.fails, self.told = fails, 0

        def shutdown(self) -> None:
            self.told += 1
            if self.fails:
                raise RuntimeError("this protocol cannot close")

    state = ServerState()
    broken, fine = Connection(True), Connection(False)
    state.connections.update({broken, fine})
    task = asyncio.ensure_future(_close_connections(state))
    await asyncio.sleep(LATE_POLL_S * 5)
    task.cancel()
    assert (broken.told, fine.told) == (1, 1) and "telling a connection to close failed" in caplog.text


@pytest.mark.parametrize("internal", ["RequestResponseCycle.send", "Server.shutdown"])
def test_a_changed_uvicorn_stops_start_up_with_one_line(monkeypatch, internal):
    from uvicorn.protocols.http import h11_impl
    from uvicorn.server import Server

    async def send(self, message):  # a future uvicorn whose send no longer knows `disconnected`
        return None

    if internal == "Server.shutdown":  # a future uvicorn whose shutdown is no longer a coroutine
        monkeypatch.setattr(Server, "shutdown", lambda self, sockets=None: None)
    else:
        monkeypatch.setattr(h11_impl.RequestResponseCycle, "send", send)
    with pytest.raises(SystemExit) as stopped:
        build_test_app()
    message = str(stopped.value.code)
    assert len(message.splitlines()) == 1
    assert internal in message and "uvicorn==0.54.0" in message
