"""`EventService`: follows the person-detecting pipelines of named sources (a hub watcher),
runs one `VisitTracker` per source, turns what the trackers decide into stored events (JPEG
encoding and file writes off the loop, one event at a time, so ids and lines stay in order)
and hands each new event to the live subscribers (the SSE streams).

Followed: sources named in the settings (`default` and SOURCES) whose model's labels include
`person`. Never camera-mode sessions (a viewer's own face must not reach every `view` token)
nor an offer's ad-hoc `video_path` files. With two person models on one source, the first
pipeline started is followed, and the next one when it stops. A visit still open when its
pipeline stops ends at once with `person_gone`.

Each subscriber has a queue of at most `buffer` undelivered events; when an event finds it
full, the subscriber is cut off: its `abort` is called (the HTTP layer aborts the TCP
connection, since a client that never reads never lets a pending write finish) and the
disconnect is counted in `visionguard_sse_disconnects_total{reason="overflow"}`.

In a cluster (an `EventLog` given), the events go through Redis: `events.streamed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Optional

import cv2
import numpy as np

from cluster.eventlog import EventLog
from core.metrics import Metrics
from events.store import EventStore
from events.streamed import StreamedEvents, settle
from events.tracker import VisitTracker

log = logging.getLogger("visionguard.events")

CHECK_INTERVAL_S = 0.25  # how often open visits are checked against the hold time
JPEG_QUALITY = 85
BATCH = 256  # events written to the file in one go, at most (a burst)
#: events waiting to be made that still hold their frame (~1 MB each); beyond it, an event is made
#: without its snapshot: a disk that hangs must not make the queue of frames grow
MAX_PENDING_IMAGES = 32


class Subscriber:
    def __init__(self, buffer: int, source: Optional[str], abort: Optional[Callable[[], None]]) -> None:
        self.queue: asyncio.Queue[dict] = asyncio.Queue(buffer)
        self.source = source
        self.abort = abort
        self.closed = False  # cut off (overflow) or the service stopped: the stream ends


@dataclass
class _Job:
    source: str
    type: str
    count: int
    image: Optional[np.ndarray]
    visit_id: Optional[str]
    ts: float
    future: Optional[asyncio.Future]
    pipeline: Any = None  # the pipeline the tracker followed (for the visit hook)


def encode_jpeg(image: np.ndarray) -> Optional[bytes]:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return jpeg.tobytes() if ok else None


class EventService:
    def __init__(self, store: EventStore, hold_s: float, buffer: int, metrics: Optional[Metrics] = None,
                 labels: Callable[[str], Iterable[str]] = lambda model: (),
                 clock: Callable[[], float] = time.monotonic, check_interval: float = CHECK_INTERVAL_S,
                 eventlog: Optional[EventLog] = None) -> None:
        self.store = store
        self.hold_s = hold_s
        self.buffer = buffer
        self.metrics = metrics or Metrics()
        self.labels = labels  # a model's labels, by model name
        self.clock = clock
        self.check_interval = check_interval
        self.subscribers: set[Subscriber] = set()
        self.overflows = 0
        self._followed: dict[str, tuple[Any, VisitTracker]] = {}  # source → (pipeline, tracker)
        self._candidates: dict[str, list[Any]] = {}  # source → running person pipelines, by start
        self._jobs: asyncio.Queue[Optional[_Job]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self.pending_images = 0
        self.snapshots_skipped = 0  # events made without a snapshot because too many frames waited
        #: awaited before each event is made: (source, type, visit_id, pipeline) -> recording id
        #: or None (event recordings: RECORD_EVENTS); it never stops an event from being made
        self.visit_hook: Optional[Callable[[str, str, Optional[str], Any], Awaitable[Optional[str]]]] = None
        #: cluster: the events go through Redis (None: this process alone)
        self.cluster = StreamedEvents(self, eventlog) if eventlog is not None else None
        #: cluster: the JPEG of an event another worker made, from that worker (its snapshots stay
        #: on its disk); given the stored event, None when there is none. Unset: such snapshots 404
        self.remote_snapshot: Optional[Callable[[dict], Awaitable[Optional[bytes]]]] = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Reload the file (a cluster: the history from Redis), then start the worker and the
        visit checker (call in the lifespan)."""
        if self.cluster is not None:
            await self.cluster.start()
        else:
            await asyncio.to_thread(self.store.load)
        self._tasks = [asyncio.create_task(self._work(), name="vg-events-worker"),
                       asyncio.create_task(self._check(), name="vg-events-check")]

    async def stop(self) -> None:
        """Close open visits (`person_gone`), write what is pending, end the streams."""
        for source in list(self._followed):
            self._unfollow(source)
        self._candidates.clear()
        self._stopped = True
        for sub in list(self.subscribers):
            sub.closed = True
        self.subscribers.clear()
        if self._tasks:
            worker, checker = self._tasks
            checker.cancel()
            self._jobs.put_nowait(None)
            try:
                await asyncio.wait_for(worker, 30)
            except asyncio.TimeoutError:
                log.warning("events: the worker did not finish writing within 30 s")
            await asyncio.gather(checker, return_exceptions=True)
            self._tasks = []
        if self.cluster is not None:  # after the worker: its last events go to Redis first
            await self.cluster.stop()

    # -- following pipelines (hub watcher, on the loop) --------------------------------------
    def follows(self, pipeline: Any) -> bool:
        spec = pipeline.capture.spec
        if spec.kind == "camera" or spec.name.startswith("file:"):
            return False
        try:
            return "person" in self.labels(pipeline.model)
        except KeyError:
            return False

    def watch(self, pipeline: Any, started: bool) -> None:
        """`hub.watchers` entry: a pipeline started (True) or is about to stop (False)."""
        if self._stopped or not self.follows(pipeline):
            return
        source = pipeline.capture.spec.name
        candidates = self._candidates.setdefault(source, [])
        if started:
            candidates.append(pipeline)
            if source not in self._followed:
                self._follow(source, pipeline)
            return
        if pipeline in candidates:
            candidates.remove(pipeline)
        followed = self._followed.get(source)
        if followed is not None and followed[0] is pipeline:
            self._unfollow(source)
            if candidates:
                self._follow(source, candidates[0])
        if not candidates:
            del self._candidates[source]

    def _follow(self, source: str, pipeline: Any) -> None:
        tracker = VisitTracker(self.hold_s, lambda type_, count, image, visit_id:
                               self.submit(source, type_, count, image, visit_id, pipeline), self.clock)
        pipeline.add_listener(tracker.on_frame)
        self._followed[source] = (pipeline, tracker)
        log.info("events: following %s/%s", source, pipeline.model)

    def _unfollow(self, source: str) -> None:
        pipeline, tracker = self._followed.pop(source)
        pipeline.remove_listener(tracker.on_frame)
        tracker.close()

    def tracker(self, source: str) -> Optional[VisitTracker]:
        followed = self._followed.get(source)
        return followed[1] if followed else None

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            for _, tracker in list(self._followed.values()):
                try:
                    tracker.check()
                except Exception:
                    log.exception("events: a visit check failed")

    # -- making events -------------------------------------------------------------------
    def submit(self, source: str, type_: str, count: int, image: Optional[np.ndarray] = None,
               visit_id: Optional[str] = None, pipeline: Any = None) -> Optional[asyncio.Future]:
        """Queue an event (on the loop; returns at once). Its future gives the stored event."""
        if self._stopped:
            return None
        future = asyncio.get_running_loop().create_future()
        if image is not None:
            if self.pending_images >= MAX_PENDING_IMAGES:
                image = None
                self.snapshots_skipped += 1
            else:
                self.pending_images += 1
        self._jobs.put_nowait(_Job(source, type_, count, image, visit_id, time.time(), future, pipeline))
        return future

    async def emit(self, source: str, type_: str, count: int, image: Optional[np.ndarray] = None,
                   visit_id: Optional[str] = None) -> dict:
        """Make an event now and wait until it is stored, published and written (tests, tools)."""
        future = self.submit(source, type_, count, image, visit_id or uuid.uuid4().hex[:12])
        if future is None:
            raise RuntimeError("the event service has stopped")
        return await future

    async def _work(self) -> None:
        """One event at a time (ids and lines in order); a burst is written to the file at once."""
        finished = False
        while not finished:
            batch = [await self._jobs.get()]
            while len(batch) < BATCH and not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            made, dropped = [], []
            for job in batch:
                if job is None:  # stop(): finish this batch, then end
                    finished = True
                    continue
                try:
                    if self.cluster is not None:  # kept, published and written once read back from Redis
                        await self.cluster.submit(await self._prepare(job), job.future)
                        continue
                    event, fell_out = await self._make(job)
                except Exception as exc:  # an event lost is logged; the next ones still come
                    log.exception("events: an event of %s could not be made", job.source)
                    settle(job.future, exc=exc)
                    continue
                made.append((job, event))
                dropped += fell_out
                await asyncio.sleep(0)  # the streams' tasks take their share of a burst
            if made or dropped:
                try:
                    await asyncio.to_thread(self.store.append_lines, [event for _, event in made], dropped)
                except Exception:
                    log.exception("events: writing %d event(s) failed", len(made))
            for job, event in made:
                settle(job.future, event)

    async def _make(self, job: _Job) -> tuple[dict, list[dict]]:
        event = await self._prepare(job)
        dropped = self.store.add(event)
        self.metrics.events.labels(job.source, job.type).inc()
        self.publish(event)
        return event, dropped

    async def _prepare(self, job: _Job) -> dict:
        """The event (id 0: not stored yet), with its snapshot written and its recording asked for."""
        snapshot_id = None
        if job.image is not None:
            try:
                jpeg = await asyncio.to_thread(encode_jpeg, job.image)
            finally:
                job.image = None  # the frame is let go of here
                self.pending_images -= 1
            if jpeg is not None:
                snapshot_id = uuid.uuid4().hex[:16]
                if not await asyncio.to_thread(self.store.write_snapshot, snapshot_id, jpeg):
                    self.store.memory_snapshots[snapshot_id] = jpeg
        event = {"id": 0, "source": job.source, "type": job.type, "ts": round(job.ts, 3), "count": job.count,
                 "visit_id": job.visit_id, "snapshot_id": snapshot_id}
        if self.visit_hook is not None and job.pipeline is not None:
            try:
                recording_id = await self.visit_hook(job.source, job.type, job.visit_id, job.pipeline)
            except Exception:  # the event still comes, without its recording
                log.exception("events: the recording of a %s event of %s failed", job.type, job.source)
                recording_id = None
            if recording_id is not None:
                event["recording_id"] = recording_id
        return event

    # -- subscribers (the SSE streams) ---------------------------------------------------------
    def subscribe(self, source: Optional[str] = None, abort: Optional[Callable[[], None]] = None) -> Subscriber:
        sub = Subscriber(self.buffer, source, abort)
        if self._stopped:
            sub.closed = True
        else:
            self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, event: dict) -> None:
        for sub in list(self.subscribers):
            if sub.source is not None and sub.source != event["source"]:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._cut_off(sub)

    def _cut_off(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.closed = True
        self.overflows += 1
        self.metrics.sse_disconnects.labels("overflow").inc()
        log.info("events: an event-stream client fell %d events behind and was disconnected", self.buffer)
        if sub.abort is not None:
            try:
                sub.abort()
            except Exception:
                log.exception("events: aborting a stream's connection failed")

    # -- reading -------------------------------------------------------------------------
    async def snapshot(self, event_id: int) -> Optional[bytes]:
        event = self.store.get(event_id)
        if event is None or not event.get("snapshot_id"):
            return None
        sid = event["snapshot_id"]
        jpeg = self.store.memory_snapshots.get(sid)
        if jpeg is None:  # in a cluster, found here too when the workers of one box share the folder
            jpeg = await asyncio.to_thread(self.store.read_snapshot, sid)
        if jpeg is None and self.remote_snapshot is not None and self.cluster is not None \
                and event.get("node") != self.cluster.node:
            try:
                jpeg = await self.remote_snapshot(event)
            except Exception:  # the maker is gone or does not answer: no snapshot, not a 500
                log.warning("events: the snapshot of event %d could not be had from %s", event_id, event.get("node"),
                            exc_info=True)
                jpeg = None
        return jpeg

    async def ids_began_again(self, last_id: int) -> bool:
        """A client's `Last-Event-ID` above every id given: ids began again (a restart without
        EVENTS_FILE). In a cluster, an id this worker has not read yet may be one the cluster
        gave a moment ago (this reader lags): only one above the cluster's counter began again;
        with Redis unreachable the client keeps its place."""
        if last_id < self.store.next_id:
            return False
        if self.cluster is None:
            return True
        given = await self.cluster.last_given()
        return given is not None and last_id > given

    def stats(self) -> dict:
        return {**self.store.stats(), "subscribers": len(self.subscribers), "overflows": self.overflows,
                "snapshots_skipped": self.snapshots_skipped,
                "followed": sorted(self._followed),
                **({"cluster": self.cluster.stats()} if self.cluster is not None else {})}
