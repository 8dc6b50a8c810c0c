"""`StreamedEvents`: `EventService` in a cluster (REDIS_URL set): the events go through the
cluster's Redis Stream (`cluster.eventlog.EventLog`), so that history, ids and `Last-Event-ID`
resume are the same on every worker (doc/CLUSTER.md "Events").

The worker that runs a source's pipeline (its owner) makes that source's events. It does not
keep them itself: a sender task appends each one to the stream, where it gets its cluster-wide
id. Every worker, the maker included, runs one reader task (`XREAD`, blocking at most
`BLOCK_S`) that keeps each streamed event in its own `EventStore` (the newest EVENTS_MAX, in
memory) and hands it to its own SSE subscribers at once, in id order: the API reads the store
as it does in one process. The maker also appends its own events' lines to EVENTS_FILE when it
reads them back (workers of one box that share the file write every event once), and an
`emit()` returns then. At start a worker takes the stream's newest EVENTS_MAX as its history;
the file only gives the floor its ids never go below.

Redis unreachable: events are never made up locally, since a local id would collide with the
ids the cluster goes on giving elsewhere. The sender keeps them, in order, in a queue of at most
EVENTS_MAX (a longer outage drops the oldest, each logged and counted in `lost`: beyond
EVENTS_MAX they would have fallen out of every worker's history anyway) and appends them when
Redis returns, one try every `RETRY_S`; their `ts` stays when they happened. Nothing waits on
Redis on the way: the pipeline, the trackers and the event worker go on. The outage is logged
once when it starts and once when it ends; `stats()` shows `redis`, `waiting` and `lost`. Events
still waiting when the worker stops are logged and counted as lost. An append whose answer was
lost (Redis died in between) is tried again: such an event may come twice, with two ids.

Readers go on from the newest id they hold after Redis returns. Roughly once a second each
reader also lifts the id counter to the newest id its worker knows (`EventLog.sync`), so a
Redis that restarted empty goes on above the old ids; an event this worker appended that the
emptied stream no longer has is appended again (a new id) rather than waited for forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from cluster.connection import ClusterDown
from cluster.eventlog import EventLog
from events.store import checked

if TYPE_CHECKING:  # the service imports this module
    from events.service import EventService

log = logging.getLogger("visionguard.events")

BLOCK_S = 0.5  # one XREAD waits this long at most: a stop never waits longer for the reader
RETRY_S = 0.5  # between tries while Redis is unreachable
SYNC_S = 1.0  # how often a reader lifts the id counter to what its worker knows
STOP_WAIT_S = 5.0  # at stop, for the last events to be appended and read back

Pending = tuple[dict, Optional[asyncio.Future]]


def settle(future: Optional[asyncio.Future], result: Optional[dict] = None,
           exc: Optional[BaseException] = None) -> None:
    """Give a waiting `emit` its event (or its error), once."""
    if future is not None and not future.done():
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


class StreamedEvents:
    def __init__(self, service: "EventService", eventlog: EventLog) -> None:
        self.service = service
        self.log = eventlog
        self.node = eventlog.node_id
        self.limit = service.store.max_events  # events waiting for Redis, at most
        self.outbox: deque[Pending] = deque()  # made here, not yet appended (oldest first)
        self._sending: Optional[Pending] = None  # the one being appended now
        self.unread: dict[int, Pending] = {}  # appended by this worker, not yet read back
        self.last = 0  # the newest id read from the stream
        self.known = 0  # the newest id this worker appended
        self.redis_ok = True
        self.appended = 0
        self.lost = 0  # made here and never stored: dropped while Redis was down, or still waiting at stop
        self.skipped = 0  # streamed events not kept: not newer than the newest kept, or invalid
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        store = self.service.store
        await asyncio.to_thread(store.load_id_floor)
        try:
            history = await self.log.newest(store.max_events)
        except ClusterDown as exc:  # the reader reads the stream from its start once Redis is back
            self._down(exc)
            history = []
        for event in history:
            self._insert(event)
        if history:
            log.info("events: %d event(s) of the cluster's history from Redis (newest id %d)", len(history),
                     self.last)
        self._tasks = [asyncio.create_task(self._send(), name="vg-events-send"),
                       asyncio.create_task(self._read(), name="vg-events-read")]

    async def stop(self) -> None:
        """Append what is waiting and read it back while Redis answers (STOP_WAIT_S at most)."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in running:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        left = ([self._sending] if self._sending else []) + list(self.outbox)
        self._sending = None
        self.outbox.clear()
        if left:
            self.lost += len(left)
            log.warning("events: %d event(s) made while Redis was unreachable were not stored (stopping)", len(left))
            for _, future in left:
                settle(future, exc=ClusterDown("Redis was unreachable until the service stopped"))
        for event, future in self.unread.values():  # stored in Redis, not read back before the stop
            settle(future, event)
        self.unread.clear()
        await self.log.close()

    # -- making (the service's worker) ----------------------------------------------------------
    async def submit(self, event: dict, future: Optional[asyncio.Future]) -> None:
        """Queue a made event (no id yet) for the stream; its future gets it once read back."""
        event["node"] = self.node
        if self.outbox and len(self.outbox) + (self._sending is not None) >= self.limit:
            # a long outage: the oldest waiting goes (see the module's docstring)
            old, old_future = self.outbox.popleft()
            self.lost += 1
            if self.lost == 1 or self.lost % 100 == 0:
                log.warning("events: Redis is unreachable and %d events wait; the oldest are dropped (%d so far)",
                            self.limit, self.lost)
            settle(old_future, exc=ClusterDown("dropped: Redis was unreachable and too many events waited"))
            if old.get("snapshot_id"):
                self.service.store.memory_snapshots.pop(old["snapshot_id"], None)
                await asyncio.to_thread(self.service.store.append_lines, [], [old])  # deletes its file
        self.outbox.append((event, future))
        self._wake.set()

    def _floor(self) -> int:
        return max(self.service.store.next_id - 1, self.known)

    async def _send(self) -> None:
        while True:
            if not self.outbox:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self._sending = self.outbox.popleft()
            event, future = self._sending
            try:
                stored = await self.log.append(event, self._floor())
            except ClusterDown as exc:
                self.outbox.appendleft(self._sending)  # first again: the order stays
                self._sending = None
                self._down(exc)
                if self._stopping:
                    return
                await asyncio.sleep(RETRY_S)
                continue
            except Exception as exc:  # refused by Redis (not a connection problem): the next ones still go
                self._sending = None
                self.lost += 1
                log.exception("events: Redis refused an event of %s", event.get("source"))
                settle(future, exc=exc)
                continue
            self._sending = None
            self._up()
            self.appended += 1
            self.known = max(self.known, stored["id"])
            if stored["id"] > self.last:
                self.unread[stored["id"]] = (stored, future)
                continue
            # the reader got it before this answer came back: what it does for this worker's events
            kept = self.service.store.get(stored["id"])
            await self._made([kept] if kept is not None else [], [])
            settle(future, kept or stored)

    # -- reading (every worker) -----------------------------------------------------------------
    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        next_sync = 0.0
        while not (self._stopping and self._done_or_down()):
            try:
                if loop.time() >= next_sync:
                    before = list(self.unread)  # appended before the sync: the stream must have them
                    newest = await self.log.sync(self._floor())
                    next_sync = loop.time() + SYNC_S
                    self._append_again([i for i in before if i > newest and i in self.unread])
                events = await self.log.read(self.last, BLOCK_S)
            except ClusterDown as exc:
                self._down(exc)
                next_sync = 0.0  # first thing when it is back: lift the counter of a Redis that restarted empty
                await asyncio.sleep(RETRY_S)
                continue
            except Exception:  # a bug or a refusal must not end the reading for good
                log.exception("events: reading the Redis stream failed")
                await asyncio.sleep(RETRY_S)
                continue
            self._up()
            if events:
                await self._take(events)

    def _done_or_down(self) -> bool:
        return not self.redis_ok or (not self.outbox and self._sending is None and not self.unread)

    def _insert(self, raw: dict) -> tuple[Optional[dict], list[dict], Optional[Pending]]:
        """Keep one streamed event: (it, the events that fell out, its pending `emit` if made here)."""
        self.last = max(self.last, raw["id"])
        event = checked(raw)
        fell_out = self.service.store.insert(event) if event is not None else None
        if event is None or fell_out is None:
            self.skipped += 1
            return None, [], None
        return event, fell_out, self.unread.pop(event["id"], None)

    async def _take(self, events: list[dict]) -> None:
        """Keep and publish streamed events one at a time (ids in order; the streams take their
        share of a burst), then write this worker's lines and let its `emit()`s return."""
        mine, dropped = [], []
        for raw in events:
            event, fell_out, pending = self._insert(raw)
            if event is None:
                continue
            dropped += fell_out
            self.service.publish(event)
            if pending is not None:
                mine.append((event, pending[1]))
            await asyncio.sleep(0)
        await self._made([event for event, _ in mine], dropped)
        for event, future in mine:
            settle(future, event)

    async def _made(self, mine: list[dict], dropped: list[dict]) -> None:
        """This worker's events are counted and written to its file once they are kept."""
        for event in mine:
            self.service.metrics.events.labels(event["source"], event["type"]).inc()
        if mine or dropped:
            try:
                await asyncio.to_thread(self.service.store.append_lines, mine, dropped)
            except Exception:
                log.exception("events: writing %d event(s) failed", len(mine))

    def _append_again(self, lost: list[int]) -> None:
        """Events this worker appended that the stream lost (Redis restarted empty before any
        reader got them): appended again, before anything newer, with new ids."""
        if not lost:
            return
        log.warning("events: %d event(s) were lost from the Redis stream (a restart?); appending them again",
                    len(lost))
        for event_id in sorted(lost, reverse=True):
            event, future = self.unread.pop(event_id)
            self.outbox.appendleft(({k: v for k, v in event.items() if k != "id"}, future))
        self._wake.set()

    # -- state ---------------------------------------------------------------------------------
    def _down(self, exc: BaseException) -> None:
        if self.redis_ok:
            self.redis_ok = False
            log.warning("events: %s; events made here wait (at most %d) and are stored in order when it is back",
                        exc, self.limit)

    def _up(self) -> None:
        if not self.redis_ok:
            self.redis_ok = True
            log.info("events: Redis is reachable again (%d event(s) waiting to be stored)",
                     len(self.outbox) + (self._sending is not None))

    async def last_given(self) -> Optional[int]:
        """The newest id the cluster has given; None while Redis is unreachable."""
        try:
            return await self.log.last_id()
        except ClusterDown:
            return None

    def stats(self) -> dict[str, Any]:
        return {"node": self.node, "redis": "ok" if self.redis_ok else "down",
                "waiting": len(self.outbox) + (self._sending is not None), "appended": self.appended,
                "lost": self.lost, "skipped": self.skipped + self.log.corrupt, "last_id": self.last}
