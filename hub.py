"""`PipelineHub`: one capture per source and one `AIProcessor` per (source, model), shared
by every viewer, started by the first and stopped by the last.

A watchdog thread (like Frigate's) restarts any pipeline thread that died, and a process or
clock thread stuck in one step for `STAGE_STUCK_S` (a hung model or encoder); restarts are
rate-limited per thread (`core.workers`), and a thread that keeps failing shows in /health.
A source that is started again right after its last viewer left waits until the previous
capture has released it (a V4L2 camera cannot be opened twice).

`release(pipeline, linger_s)` keeps a pipeline running `linger_s` after that release even if
nobody uses it then (a snapshot's: the console refreshes each tile every few seconds, and
restarting a pipeline for each refresh would reopen the source every time)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Optional

from core.memory import trim_heap
from core.metrics import Metrics
from core.workers import Worker
from detectors import ModelEntry
from model import AIProcessor, EncodeSettings, StageMeters
from sources import FrameSource, SourceSpec, open_source
from sources.capture import Capture

log = logging.getLogger("visionguard.hub")

STAGE_STUCK_S = 30.0  # far above any model's time per frame; captures have their own read timeouts


class PipelineHub:
    def __init__(self, width: int, height: int, fps: int, open_timeout: float = 5.0, read_timeout: float = 5.0,
                 retry_max_s: float = 30.0, encode: EncodeSettings = EncodeSettings(),
                 metrics: Optional[Metrics] = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.encode = encode
        self.open_timeout, self.read_timeout, self.retry_max_s = open_timeout, read_timeout, retry_max_s
        self._captures: dict[str, Capture] = {}
        self._capture_users: dict[str, int] = {}
        self._retiring: dict[str, Capture] = {}  # captures being stopped, until their thread has ended
        #: source → why it was down when its last viewer left: /api/sources keeps showing it
        #: while the source is idle, until a capture of it is live again
        self.last_errors: dict[str, str] = {}
        self._pipelines: dict[tuple[str, str], AIProcessor] = {}
        self._lock = threading.Lock()  # the watchdog and stats read while the loop mutates
        self._watchdog: Optional[Worker] = None
        #: pipelines with no viewer kept running until their timer fires (`release(linger_s=)`)
        self._lingering: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._linger_until: dict[tuple[str, str], float] = {}  # monotonic time each pipeline may stop after
        self._expiring: set[asyncio.Task] = set()  # linger ends being carried out (kept referenced)
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # the loop the linger timers run on
        self.metrics = metrics or Metrics()
        #: called on the loop with (pipeline, True) once it has started and (pipeline, False)
        #: when its last viewer has left, before it stops (the event detector follows pipelines)
        self.watchers: list[Callable[[AIProcessor, bool], None]] = []
        #: lifetime counters, for tests and /info
        self.captures_started = 0
        self.pipelines_started = 0

    # -- called on the event loop -------------------------------------------
    def acquire(self, spec: SourceSpec, model: ModelEntry, notice: str = "",
                source_factory: Optional[Callable[[], FrameSource]] = None) -> AIProcessor:
        """The shared pipeline for (source, model), started if needed. `model` must be loaded.
        `source_factory` overrides how the source is opened (the viewer's own camera)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pipeline = self._pipelines.get((spec.name, model.name))
            if pipeline is None:
                capture = self._captures.get(spec.name)
                if capture is None:
                    previous = self._retiring.get(spec.name)
                    m, label = self.metrics, spec.metric_label
                    capture = Capture(spec, source_factory or self._opener(spec), self.width, self.height,
                                      self.fps, self.retry_max_s, after=previous.released if previous else None,
                                      frames_counter=m.source_frames.labels(label),
                                      reconnects_counter=m.source_reconnects.labels(label))
                    capture.start()
                    self._captures[spec.name] = capture
                    self._capture_users[spec.name] = 0
                    self.captures_started += 1
                self._capture_users[spec.name] += 1
                try:
                    pipeline = AIProcessor(capture, model.instance, model.name, self.fps, notice, model.record,
                                           self.encode, self._meters(spec, model.name),
                                           self.metrics.sent_frames.labels(spec.metric_label))
                    for worker in pipeline.workers:
                        worker.stuck_after = STAGE_STUCK_S
                    pipeline.start(loop)
                except BaseException:  # e.g. no thread can be started: give the capture back
                    self._capture_users[spec.name] -= 1
                    if self._capture_users[spec.name] == 0:
                        del self._capture_users[spec.name]
                        self._captures.pop(spec.name).worker.stop_event.set()  # it closes its source as it ends
                    raise
                self._pipelines[(spec.name, model.name)] = pipeline
                self.pipelines_started += 1
                log.info("pipeline %s/%s started", spec.name, model.name)
                started = True
            else:
                started = False
                linger = self._lingering.pop((spec.name, model.name), None)
                if linger is not None:  # a lingering pipeline is wanted again: it stays
                    linger.cancel()
            pipeline.viewers += 1
            self._ensure_watchdog()
        if started:
            self._tell_watchers(pipeline, True)
        return pipeline

    def _meters(self, spec: SourceSpec, model: str) -> StageMeters:
        m, label = self.metrics, spec.metric_label
        return StageMeters(m.processed_frames.labels(label, model), m.skipped_frames.labels(label, model),
                           m.inference.labels(model))

    def _tell_watchers(self, pipeline: AIProcessor, started: bool) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(pipeline, started)
            except Exception:  # an observer never breaks the video
                log.exception("a pipeline watcher failed")

    def hold(self, spec: SourceSpec, model: ModelEntry, notice: str = "") -> AIProcessor:
        """Keep a pipeline running with no viewer (a source's `always_on`), until stop_all."""
        pipeline = self.acquire(spec, model, notice)
        pipeline.held += 1
        return pipeline

    def held(self, source: str) -> bool:
        """Some pipeline of `source` is kept running by `hold`."""
        return any(p.held > 0 for p in self.pipelines_for(source))

    async def unhold(self, source: str) -> None:
        """Undo `hold` for `source` (its lease went to another node of the cluster)."""
        for pipeline in self.pipelines_for(source):
            while pipeline.held > 0:
                pipeline.held -= 1
                await self.release(pipeline)

    def _opener(self, spec: SourceSpec) -> Callable[[], FrameSource]:
        return lambda: open_source(spec, self.width, self.height, self.fps, self.open_timeout, self.read_timeout)

    async def release(self, pipeline: AIProcessor, linger_s: float = 0.0) -> None:
        """One viewer left; the last one stops the pipeline (and the capture if unused). With
        `linger_s` > 0 (a snapshot), the pipeline is kept `linger_s` after this release even when
        nobody uses it then, whoever leaves last; acquiring it meanwhile keeps it, of course."""
        with self._lock:
            pipeline.viewers -= 1
            key = (pipeline.source, pipeline.model)
            if self._pipelines.get(key) is not pipeline:
                return
            if linger_s > 0:
                self._linger_until[key] = max(self._linger_until.get(key, 0.0), time.monotonic() + linger_s)
            if pipeline.viewers > 0 or self._keep_lingering(pipeline):
                return
            detached = self._detach(pipeline)
        await self._stop_detached(pipeline, *detached)

    def _keep_lingering(self, pipeline: AIProcessor) -> bool:
        """Under the lock, for a pipeline nobody uses: if its linger has time left, (re)arm the
        timer that stops it then, and say so."""
        key = (pipeline.source, pipeline.model)
        left = self._linger_until.get(key, 0.0) - time.monotonic()
        if left <= 0:
            return False
        previous = self._lingering.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._loop = asyncio.get_running_loop()
        cell: list = []  # the timer knows itself: a newer one for the same key is not its to drop
        cell.append(self._loop.call_later(left, self._linger_over, pipeline, cell))
        self._lingering[key] = cell[0]
        return True

    def _linger_over(self, pipeline: AIProcessor, cell: list) -> None:
        task = asyncio.ensure_future(self._expire(pipeline, cell[0]))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire(self, pipeline: AIProcessor, timer: asyncio.TimerHandle) -> None:
        with self._lock:
            key = (pipeline.source, pipeline.model)
            if self._lingering.get(key) is timer:
                del self._lingering[key]
            if pipeline.viewers > 0 or self._pipelines.get(key) is not pipeline or self._keep_lingering(pipeline):
                return  # watched again, taken by stop_all, or its linger was extended meanwhile
            detached = self._detach(pipeline)
        await self._stop_detached(pipeline, *detached)

    def _detach(self, pipeline: AIProcessor) -> tuple[list, Optional[Capture]]:
        """Under the lock: take a pipeline nobody uses out of the hub (and its capture if unused)."""
        to_stop: list = [pipeline]
        del self._pipelines[(pipeline.source, pipeline.model)]
        self._linger_until.pop((pipeline.source, pipeline.model), None)
        self._capture_users[pipeline.source] -= 1
        retired = None
        if self._capture_users[pipeline.source] == 0:
            retired = self._captures.pop(pipeline.source)
            if retired.state != "live" and retired.last_error and retired.spec.kind != "camera":
                self.last_errors[pipeline.source] = retired.last_error
            else:  # live when it was left (a viewer's own camera is not a source: not kept)
                self.last_errors.pop(pipeline.source, None)
            self._retiring[pipeline.source] = retired
            to_stop.append(retired)
            del self._capture_users[pipeline.source]
        return to_stop, retired

    async def _stop_detached(self, pipeline: AIProcessor, to_stop: list, retired: Optional[Capture]) -> None:
        self._tell_watchers(pipeline, False)
        # joining threads blocks: keep it off the event loop
        await asyncio.to_thread(_stop_all, to_stop)
        if retired is not None:
            with self._lock:
                if self._retiring.get(pipeline.source) is retired and retired.released.is_set():
                    del self._retiring[pipeline.source]
        log.info("pipeline %s/%s stopped", pipeline.source, pipeline.model)

    def source_error(self, name: str) -> Optional[str]:
        """Why the source is down: its capture's last error, or the one it had when its last
        viewer left; forgotten once it is live again."""
        with self._lock:
            capture = self._captures.get(name)
            if capture is not None and capture.state == "live":
                self.last_errors.pop(name, None)  # it recovered
                return None
            return (capture.last_error if capture is not None else None) or self.last_errors.get(name)

    def lingering(self) -> list[tuple[str, str]]:
        """(source, model) of the pipelines running with no viewer until their linger ends."""
        with self._lock:
            return list(self._lingering)

    # -- shutdown (blocking) --------------------------------------------------
    def stop_all(self) -> None:
        with self._lock:
            items = list(self._pipelines.values()) + list(self._captures.values())
            self._pipelines.clear()
            self._captures.clear()
            self._capture_users.clear()
            watchdog, self._watchdog = self._watchdog, None
            lingering = list(self._lingering.values())
            self._lingering.clear()
            self._linger_until.clear()  # a timer that still fires finds its pipeline gone: nothing to do
        if lingering and self._loop is not None:
            _cancel(self._loop, lingering)
        _stop_all(items)
        if watchdog:
            watchdog.stop()

    # -- watchdog -------------------------------------------------------------
    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = Worker("vg-watchdog", self._watch)
            self._watchdog.start()

    def _watch(self) -> None:
        with self._lock:
            workers = [w for p in self._pipelines.values() for w in p.workers]
            workers += [c.worker for c in self._captures.values()]
        for w in workers:
            w.ensure_alive()
        watchdog = self._watchdog  # None once stop_all has begun
        if watchdog is not None:
            watchdog.stop_event.wait(0.5)

    def problems(self) -> list[str]:
        """Threads the watchdog has given up restarting for now (for /health)."""
        with self._lock:
            workers = [w for p in self._pipelines.values() for w in p.workers]
            workers += [c.worker for c in self._captures.values()]
        return [f"Thread {w.name} keeps failing ({w.restarts} restarts; last: {w.last_error})"
                for w in workers if w.flapping]

    # -- stats ----------------------------------------------------------------
    def capture_for(self, source: str) -> Optional[Capture]:
        return self._captures.get(source)

    def running(self) -> tuple[list[Capture], list[AIProcessor]]:
        """The captures and pipelines running now (for /metrics and /health)."""
        with self._lock:
            return list(self._captures.values()), list(self._pipelines.values())

    def pipelines_for(self, source: str) -> list[AIProcessor]:
        with self._lock:
            return [p for (name, _), p in self._pipelines.items() if name == source]

    def stats(self) -> dict:
        with self._lock:
            return {
                "captures_started": self.captures_started,
                "pipelines_started": self.pipelines_started,
                "lingering": [f"{source}/{model}" for source, model in self._lingering],  # no viewer, kept a while
                "captures": [_capture_stats(c, self._capture_users[n]) for n, c in self._captures.items()],
                "pipelines": [p.stats() for p in self._pipelines.values()],
            }


def _capture_stats(c: Capture, users: int) -> dict:
    return {
        "source": c.spec.name,
        "kind": c.spec.kind,
        "state": c.state,
        "failures": c.failures,
        "opens": c.opens,
        "frames_read": c.frames,
        "fps": round(c.measured_fps, 2),
        "pipelines": users,
        "restarts": c.worker.restarts,
        "last_error": c.last_error,
    }


def _cancel(loop: asyncio.AbstractEventLoop, handles: list[asyncio.TimerHandle]) -> None:
    """Cancel loop timers from any thread (stop_all runs off the loop)."""
    for handle in handles:
        try:
            loop.call_soon_threadsafe(handle.cancel)
        except RuntimeError:  # the loop is closed: the timer will never run
            pass


def _stop_all(items: list) -> None:
    for item in items:
        item.stop()
    trim_heap()  # the stopped stages' frames are free now: give the pages back
