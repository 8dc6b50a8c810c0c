"""The uvicorn and Starlette internals behind two ASGI extensions that long responses (the
event stream) need, in one module, checked at start-up (`self_check`).

`install(app)` wraps the app's whole middleware stack (Starlette builds it lazily with
`build_middleware_stack()`; the wrapper goes around what it returns, so it is outermost and
sees uvicorn's own `send`). For each HTTP request served by uvicorn it puts into
`scope["extensions"]`:

- `visionguard.abort`: a callable that aborts the request's TCP connection. A stream that
  must cut off a client that never reads cannot just stop: its pending write waits for a
  drain that never comes. uvicorn's `send` is the bound method `RequestResponseCycle.send`,
  whose `transport` is the connection's asyncio transport. After `transport.abort()` uvicorn's
  `connection_lost` marks the cycle `disconnected` and resumes writing, so the pending `send`
  returns, later ones return at once, `receive` answers `http.disconnect`, and `run_asgi`
  logs nothing ("returned without completing response" is only said of connected cycles).
- `visionguard.closing`: a callable that is true once the server has begun a graceful
  shutdown (uvicorn calls each connection protocol's `shutdown()` and then waits for the
  response to end), so that a stream ends rather than holding the shutdown. `install` wraps
  the protocols' `shutdown` to mark the protocol (reached from the cycle's transport with the
  public `get_protocol()`), and the server's `shutdown` to mark its `server_state`, which all
  its connections share: asyncio makes a connection's protocol a few loop turns after the
  accept, so one accepted as the shutdown begins is never sent `shutdown()`: its stream would
  hold the shutdown for good, and once the stream ends its idle keep-alive connection would,
  if the client comes back on it. So the server's `shutdown` also tells, until it is over,
  each connection uvicorn has not told, and aborts those still open after the app's grace
  (SHUTDOWN_GRACE_S: a download nobody reads would hold it for good). The request's own
  `keep_alive` would not do: it is False from the start for HTTP/1.0 and `Connection: close`
  requests (nginx's default to upstreams).

Without uvicorn (another server, an in-process test client) neither extension is there and
the stream does without. uvicorn and Starlette are pinned (`PINNED`, `STARLETTE_PINNED`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, Callable

import starlette
import starlette.applications
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http import h11_impl
from uvicorn.server import Server, ServerState

from compat.checks import check_internals
from compat.uvicorn import PINNED, GuardedConnection, http_implementations

log = logging.getLogger("visionguard.connections")

ABORT = "visionguard.abort"
CLOSING = "visionguard.closing"


class ConnectionExtensions:
    """The outermost ASGI layer: adds ABORT and CLOSING for requests served by uvicorn, and
    gives the server the app's shutdown grace."""

    def __init__(self, app: Any, grace_s: float) -> None:
        self.app = app
        self.grace_s = grace_s
        self.cycles = tuple(cycle for _, cycle in http_implementations())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            cycle = getattr(send, "__self__", None)
            if isinstance(cycle, self.cycles):
                transport = cycle.transport
                protocol = transport.get_protocol()
                if isinstance(protocol, GuardedConnection):  # compat.uvicorn's limits sit in between
                    protocol = protocol.inner
                setattr(protocol.server_state, GRACE, self.grace_s)  # for this server's shutdown
                scope["extensions"] = {**(scope.get("extensions") or {}), ABORT: transport.abort,
                                       CLOSING: functools.partial(_closing, protocol)}
        await self.app(scope, receive, send)


SHUTTING_DOWN = "_visionguard_shutting_down"  # set on a protocol, and on its server's state, at shutdown
GRACE = "_visionguard_grace_s"  # set on a server's state: how long its shutdown waits for open responses
LATE_POLL_S = 0.1  # how often, during a shutdown, connections uvicorn has not told are looked for
DEFAULT_GRACE_S = 10.0  # a server no request of the app's reached (it has no open response to wait for)


def _closing(protocol: Any) -> bool:
    return getattr(protocol, SHUTTING_DOWN, False) or getattr(protocol.server_state, SHUTTING_DOWN, False)


def _mark_shutdown(protocol_class: Any) -> None:
    original = protocol_class.shutdown
    if getattr(original, "visionguard", False):
        return

    def shutdown(self) -> None:
        setattr(self, SHUTTING_DOWN, True)
        original(self)

    shutdown.visionguard = True  # type: ignore[attr-defined]
    protocol_class.shutdown = shutdown


def _mark_server_shutdown() -> None:
    original = Server.shutdown
    if getattr(original, "visionguard", False):
        return

    async def shutdown(self, *args, **kwargs) -> None:
        setattr(self.server_state, SHUTTING_DOWN, True)  # before it closes anything
        late = asyncio.ensure_future(_close_connections(self.server_state))
        try:
            await original(self, *args, **kwargs)
        finally:
            late.cancel()

    shutdown.visionguard = True  # type: ignore[attr-defined]
    shutdown.__wrapped__ = original  # type: ignore[attr-defined]  # what the self-check reads
    Server.shutdown = shutdown  # type: ignore[method-assign]


async def _close_connections(server_state: Any) -> None:
    """Until the shutdown is over:

    - uvicorn sends `shutdown()` once, to the connections it has then. One whose protocol is
      made after that pass is never told: its stream ends (it sees the marked state), but the
      connection stays open, and a client that comes back on it before the keep-alive timeout
      (EventSource: `retry: 3000`, uvicorn: 5 s) holds the shutdown for good. So every
      connection not yet told is told.
    - uvicorn waits for open responses, by default for good: a download that a paused `<video>`
      stopped reading never ends. After the server's grace (SHUTDOWN_GRACE_S) the connections
      still open are aborted: their pending `send` returns (see ABORT), quietly, where uvicorn's
      own `timeout_graceful_shutdown` would cancel each request and log its traceback."""
    loop = asyncio.get_running_loop()
    grace = getattr(server_state, GRACE, DEFAULT_GRACE_S)
    deadline = loop.time() + grace
    while True:
        await asyncio.sleep(LATE_POLL_S)
        if loop.time() >= deadline and server_state.connections:
            deadline = float("inf")
            open_now = list(server_state.connections)
            log.warning("shutdown: %d connection(s) still open after %g s (SHUTDOWN_GRACE_S); closing them",
                        len(open_now), grace)
            for connection in open_now:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
        for connection in list(server_state.connections):
            if getattr(connection, SHUTTING_DOWN, False):
                continue
            setattr(connection, SHUTTING_DOWN, True)  # told once, whatever its class (a WebSocket too)
            try:
                connection.shutdown()
            except Exception:  # one connection's failure must not leave the others untold
                log.exception("shutdown: telling a connection to close failed")


def install(app: FastAPI, grace_s: float) -> None:
    """Wrap the middleware stack the app will build on its first request (and, once per
    process, the protocols' `shutdown`); `grace_s`: how long a shutdown of the server that
    serves it waits for open responses."""
    for protocol_class, _ in http_implementations():
        _mark_shutdown(protocol_class)
    _mark_server_shutdown()
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: ConnectionExtensions(build(), grace_s)  # type: ignore[method-assign]


# -- the self-check -----------------------------------------------------------------------------
def _names(function: Any) -> tuple:
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def _cycle_ok(cycle: Any, protocol: Any) -> bool:
    return (inspect.iscoroutinefunction(cycle.send) and "transport" in _names(cycle.__init__)
            and "disconnected" in _names(cycle.send)
            and "send" in _names(cycle.run_asgi) and "disconnected" in _names(cycle.run_asgi)
            and {"disconnected", "resume_writing"} <= set(_names(protocol.connection_lost))
            and callable(getattr(protocol, "shutdown", None)) and "server_state" in _names(protocol.__init__)
            and "transport" in _names(protocol.connection_made))


def _server_shutdown() -> bool:
    return (inspect.iscoroutinefunction(Server.shutdown) and "server_state" in _names(Server.__init__)
            and "connections" in _names(inspect.unwrap(Server.shutdown))
            and "connections" in _names(ServerState.__init__))


def _h11() -> bool:
    return _cycle_ok(h11_impl.RequestResponseCycle, h11_impl.H11Protocol)


def _httptools() -> bool:
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError as exc:  # optional; without it uvicorn never uses these classes
        return exc.name == "httptools"
    return _cycle_ok(httptools_impl.RequestResponseCycle, httptools_impl.HttpToolsProtocol)


def _lazy_stack() -> bool:
    calls = [FastAPI.__call__, starlette.applications.Starlette.__call__]
    return all({"middleware_stack", "build_middleware_stack"} <= set(_names(c)) for c in calls)


STARLETTE_PINNED = "starlette==1.10.0"
INTERNALS: dict[str, Callable[[], bool]] = {
    "uvicorn.protocols.http.h11_impl.RequestResponseCycle.send": _h11,
    "uvicorn.protocols.http.httptools_impl.RequestResponseCycle.send": _httptools,
    "uvicorn.server.Server.shutdown": _server_shutdown,
}
STARLETTE_INTERNALS: dict[str, Callable[[], bool]] = {
    "starlette.applications.Starlette.build_middleware_stack": _lazy_stack,
}


def self_check() -> None:
    """Raise IncompatibleLibrary (one line) if an internal listed above is missing."""
    check_internals("uvicorn", uvicorn.__version__, PINNED, INTERNALS)
    check_internals("starlette", starlette.__version__, STARLETTE_PINNED, STARLETTE_INTERNALS)
