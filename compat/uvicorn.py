"""Every use of uvicorn's private internals, in one module, checked at start-up.

uvicorn reads no request-head timeout and caps no client: a connection that never sends (or
trickles) its request head is kept for ever, and its `limit_concurrency` answers 503 to every
request, `/health` included. `install()` adds both limits to the uvicorn server that runs the
app, from the app's lifespan, so it works however uvicorn was started (`python main.py`,
`uvicorn main:app`, `uvicorn main:create_app --factory`, a gunicorn UvicornWorker):

- the server's HTTP protocol class (`Config.http_protocol_class`, h11 or httptools) is wrapped
  so that each connection is first checked against a cap per client address (over it: closed
  at once) and then closed if its request head is not complete within `header_timeout`
  (counted from the connection, or from the first byte of a later request on a keep-alive
  connection; uvicorn's own keep-alive timeout governs the idle time between requests);
- the event loop's exception handler reports resource errors (`accept()` at the descriptor
  limit: asyncio reports every failed try, thousands a second, each with a traceback) in one
  line, then at most one summary line per `LOG_INTERVAL_S`.

uvicorn is pinned (`PINNED`). The internals relied on are listed in `INTERNALS` with a check;
`self_check()` runs when the app is built and stops start-up with one line naming the missing
internal and the pinned version, so that a changed uvicorn never leaves the limits off silently.

- `uvicorn.lifespan.on.LifespanOn.main`: the app's lifespan runs inside this coroutine, whose
  `self.config` is the server's `Config` (how the lifespan finds its server).
- `uvicorn.server.Server.startup`: its `create_protocol` reads `config.http_protocol_class` for
  every connection, so replacing it from the lifespan (which runs before the first accept)
  takes effect.
- `uvicorn.protocols.http.h11_impl.H11Protocol.cycle` (and httptools' when installed): the
  protocol sets `cycle` when a request head is complete; `cycle.response_complete` says the
  connection waits for the next request.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import logging
from typing import Any, Callable, Optional

import uvicorn
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http import h11_impl
from uvicorn.server import Server

from compat.checks import IncompatibleLibrary, check_internals  # noqa: F401 (IncompatibleLibrary: re-exported)

PINNED = "uvicorn==0.54.0"
LOG_INTERVAL_S = 10.0
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = logging.getLogger("visionguard.connections")


# -- one line now, then one summary per interval --------------------------------------------
class Throttled:
    """Log the first event at once; count the next ones and log one summary per `interval`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, level: int, interval: float = LOG_INTERVAL_S) -> None:
        self.loop, self.level, self.interval = loop, level, interval
        self.held = 0
        self.summary = ""
        self.timer: Optional[asyncio.TimerHandle] = None

    def report(self, line: str, summary: str) -> None:
        """`summary` is formatted with `n` (events held back) and `interval`."""
        if self.timer is None:
            log.log(self.level, line)
            self.timer = self.loop.call_later(self.interval, self.flush)
        else:
            self.held += 1
            self.summary = summary

    def flush(self) -> None:
        self.timer = None
        if self._say_held():
            self.timer = self.loop.call_later(self.interval, self.flush)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._say_held()

    def _say_held(self) -> bool:
        if not self.held:
            return False
        log.log(self.level, self.summary.format(n=self.held, interval=f"{self.interval:g}"))
        self.held = 0
        return True


# -- the connection limits ------------------------------------------------------------------
def _peer_address(transport: asyncio.BaseTransport) -> Optional[str]:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, (tuple, list)) and peer else None  # None: a Unix socket


class ConnectionLimits:
    """The limits of one server: the open connections per address, and the counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, header_timeout: float, max_per_address: int) -> None:
        self.loop = loop
        self.header_timeout = header_timeout
        self.max_per_address = max_per_address
        self.open: dict[str, set[asyncio.BaseTransport]] = {}
        self.refused = 0
        self.timed_out = 0
        self.refusals = Throttled(loop, logging.WARNING)
        self.timeouts = Throttled(loop, logging.WARNING)

    def admit(self, address: Optional[str], transport: asyncio.BaseTransport) -> bool:
        if address is None:
            return True
        live = self.open.setdefault(address, set())
        if len(live) >= self.max_per_address:  # drop any that closed without telling us (upgrades)
            live.difference_update([t for t in live if t.is_closing()])
        if len(live) >= self.max_per_address:
            self.refused += 1
            self.refusals.report(
                f"closed a new connection from {address}: it already has {len(live)} open "
                f"(MAX_CONNECTIONS_PER_IP={self.max_per_address})",
                f"closed {{n}} more connections over MAX_CONNECTIONS_PER_IP={self.max_per_address} "
                f"in the last {{interval}} s (latest from {address})")
            return False
        live.add(transport)
        return True

    def release(self, address: Optional[str], transport: asyncio.BaseTransport) -> None:
        live = self.open.get(address) if address is not None else None
        if live is not None:
            live.discard(transport)
            if not live:
                del self.open[address]

    def expired(self, address: Optional[str]) -> None:
        self.timed_out += 1
        self.timeouts.report(
            f"closed a connection from {address}: no complete request head within "
            f"HEADER_TIMEOUT_S={self.header_timeout:g} s",
            f"closed {{n}} more connections without a complete request head within "
            f"{self.header_timeout:g} s in the last {{interval}} s (latest from {address})")

    def protocol_factory(self, inner: Callable[..., asyncio.Protocol]) -> Callable[..., asyncio.Protocol]:
        """A stand-in for `Config.http_protocol_class`: called as uvicorn calls that class."""

        def guarded_protocol(**kwargs: Any) -> asyncio.Protocol:
            return GuardedConnection(self, functools.partial(inner, **kwargs))

        guarded_protocol.limits = self  # type: ignore[attr-defined]
        guarded_protocol.inner = inner  # type: ignore[attr-defined]
        return guarded_protocol


def _awaiting_head(protocol: Any) -> bool:
    """Whether uvicorn's HTTP protocol waits for a request head (none yet, or the last answered)."""
    cycle = protocol.cycle
    return cycle is None or cycle.response_complete


class GuardedConnection(asyncio.Protocol):
    """Sits between the transport and uvicorn's protocol for one connection."""

    def __init__(self, limits: ConnectionLimits, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.limits = limits
        self.make_inner = make_inner
        self.inner: Any = None  # uvicorn's protocol, made only for an admitted connection
        self.transport: Optional[asyncio.Transport] = None
        self.address: Optional[str] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.cycle: Any = None  # uvicorn's request cycle when the timer was armed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address = _peer_address(transport)
        if not self.limits.admit(self.address, transport):
            transport.close()
            return
        self.inner = self.make_inner()
        self.inner.connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self.cycle = self.inner.cycle
        self.timer = self.limits.loop.call_later(self.limits.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _still_ours(self) -> bool:  # not closed, and not handed over (a WebSocket upgrade)
        t = self.transport
        return t is not None and not t.is_closing() and t.get_protocol() is self

    def _expire(self) -> None:
        self.timer = None
        if self._still_ours() and self.inner.cycle is self.cycle and _awaiting_head(self.inner):
            self.limits.expired(self.address)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            return
        if self.timer is None and _awaiting_head(inner):
            self._arm()  # the first bytes of the next request on a keep-alive connection
        inner.data_received(data)
        if self.timer is not None and (inner.cycle is not self.cycle or not self._still_ours()):
            self._disarm()  # the head is complete (or the connection is closed or upgraded)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        if self.inner is not None:
            self.limits.release(self.address, self.transport)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


# -- the accept-error log ----------------------------------------------------------------------
def _resource_error_handler(previous: Optional[Callable], throttled: Throttled) -> Callable:
    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            throttled.report(
                f"{context.get('message', 'event loop error')}: {exc} (new connections wait in the "
                f"listen backlog; this is logged once per {LOG_INTERVAL_S:g} s)",
                f"{context.get('message', 'event loop error')}: {exc}, {{n}} more times in the last "
                f"{{interval}} s")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handler


# -- install from the lifespan ----------------------------------------------------------------
def _uvicorn_config() -> Any:
    """The Config of the uvicorn server whose lifespan is running now, or None."""
    task = asyncio.current_task()
    coro = task.get_coro() if task is not None else None
    if getattr(coro, "cr_code", None) is not LifespanOn.main.__code__ or coro.cr_frame is None:
        return None
    return getattr(coro.cr_frame.f_locals.get("self"), "config", None)


def http_implementations() -> list[tuple[type, type]]:
    """(protocol class, request-cycle class) of each HTTP implementation uvicorn may use here:
    h11, and httptools when it is installed."""
    found: list[tuple[type, type]] = [(h11_impl.H11Protocol, h11_impl.RequestResponseCycle)]
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # httptools is not installed: uvicorn uses h11
        return found
    return found + [(httptools_impl.HttpToolsProtocol, httptools_impl.RequestResponseCycle)]


def _supported(protocol_class: Any) -> bool:
    classes = tuple(protocol for protocol, _ in http_implementations())
    return inspect.isclass(protocol_class) and issubclass(protocol_class, classes)


class Installed:
    """What `install` changed, undone by `uninstall` (at the end of the lifespan)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Optional[ConnectionLimits], config: Any,
                 handler: Callable, previous_handler: Optional[Callable], accept_errors: Throttled) -> None:
        self.loop, self.limits, self.config = loop, limits, config
        self.handler, self.previous_handler, self.accept_errors = handler, previous_handler, accept_errors

    def uninstall(self) -> None:
        if self.limits is not None:
            if getattr(self.config.http_protocol_class, "limits", None) is self.limits:
                self.config.http_protocol_class = self.config.http_protocol_class.inner
            self.limits.refusals.close()
            self.limits.timeouts.close()
        if self.loop.get_exception_handler() is self.handler:
            self.loop.set_exception_handler(self.previous_handler)
        self.accept_errors.close()


def install(header_timeout: float, max_per_address: int) -> Installed:
    """Call from the app's lifespan (in the server's loop, before the first connection)."""
    loop = asyncio.get_running_loop()
    accept_errors = Throttled(loop, logging.ERROR)
    previous = loop.get_exception_handler()
    handler = _resource_error_handler(previous, accept_errors)
    loop.set_exception_handler(handler)
    config = _uvicorn_config()
    limits = None
    if config is None:
        log.warning("HEADER_TIMEOUT_S and MAX_CONNECTIONS_PER_IP are not applied: the app is not "
                    "served by uvicorn (see doc/SECURITY.md)")
    elif getattr(config.http_protocol_class, "limits", None) is not None:
        limits = None  # already installed on this server
    elif not _supported(config.http_protocol_class):
        log.warning("HEADER_TIMEOUT_S and MAX_CONNECTIONS_PER_IP are not applied: uvicorn's HTTP "
                    "protocol %r is not h11 or httptools", config.http_protocol_class)
    else:
        limits = ConnectionLimits(loop, header_timeout, max_per_address)
        config.http_protocol_class = limits.protocol_factory(config.http_protocol_class)
    return Installed(loop, limits, config, handler, previous, accept_errors)


# -- the self-check -----------------------------------------------------------------------------
def _names(function: Any) -> tuple:
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def _nested(function: Any, name: str) -> Any:
    code = getattr(function, "__code__", None)
    for const in code.co_consts if code is not None else ():
        if inspect.iscode(const) and const.co_name == name:
            return const
    return None


def _lifespan_main() -> bool:
    return (inspect.iscoroutinefunction(LifespanOn.main) and "loaded_app" in _names(LifespanOn.main)
            and "config" in _names(LifespanOn.__init__) and "main" in _names(LifespanOn.startup))


def _protocol_lookup() -> bool:
    create_protocol = _nested(Server.startup, "create_protocol")
    return (create_protocol is not None and "http_protocol_class" in create_protocol.co_names
            and "create_server" in _names(Server.startup))


def _has_cycle(protocol_class: Any, cycle_class: Any, parses: str) -> bool:
    return ("cycle" in _names(protocol_class.__init__) and "cycle" in _names(getattr(protocol_class, parses))
            and "response_complete" in _names(cycle_class.__init__))


def _h11_cycle() -> bool:
    return _has_cycle(h11_impl.H11Protocol, h11_impl.RequestResponseCycle, "handle_events")


def _httptools_cycle() -> bool:
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError as exc:  # httptools is optional; without it uvicorn never uses this class
        return exc.name == "httptools"
    return _has_cycle(httptools_impl.HttpToolsProtocol, httptools_impl.RequestResponseCycle, "on_headers_complete")


INTERNALS: dict[str, Callable[[], bool]] = {
    "uvicorn.lifespan.on.LifespanOn.main": _lifespan_main,
    "uvicorn.server.Server.startup.create_protocol": _protocol_lookup,
    "uvicorn.protocols.http.h11_impl.H11Protocol.cycle": _h11_cycle,
    "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol.cycle": _httptools_cycle,
}


def self_check() -> None:
    """Raise IncompatibleLibrary (one line) if an internal listed in INTERNALS is missing."""
    check_internals("uvicorn", uvicorn.__version__, PINNED, INTERNALS)
