"""`PipelineHub`: one capture per source and one `AIProcessor` per (source, model), shared
by every viewer, started by the first and stopped by the last. A watchdog thread restarts
any pipeline thread that died."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Optional

from core.workers import Worker
from detectors import ModelEntry
from model import AIProcessor, EncodeSettings
from sources import FrameSource, SourceSpec, open_source
from sources.capture import Capture

log = logging.getLogger("visionguard.hub")


class PipelineHub:
    def __init__(self, width: int, height: int, fps: int, open_timeout: float = 5.0, read_timeout: float = 5.0,
                 retry_max_s: float = 30.0, encode: EncodeSettings = EncodeSettings()) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.encode = encode
        self.open_timeout, self.read_timeout, self.retry_max_s = open_timeout, read_timeout, retry_max_s
        self._captures: dict[str, Capture] = {}
        self._capture_users: dict[str, int] = {}
        self._pipelines: dict[tuple[str, str], AIProcessor] = {}
        self._lock = threading.Lock()  # the watchdog and stats read while the loop mutates
        self._watchdog: Optional[Worker] = None
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
                    capture = Capture(spec, source_factory or self._opener(spec), self.width, self.height,
                                      self.fps, self.retry_max_s)
                    capture.start()
                    self._captures[spec.name] = capture
                    self._capture_users[spec.name] = 0
                    self.captures_started += 1
                self._capture_users[spec.name] += 1
                pipeline = AIProcessor(capture, model.instance, model.name, self.fps, notice, model.record,
                                       self.encode)
                pipeline.start(loop)
                self._pipelines[(spec.name, model.name)] = pipeline
                self.pipelines_started += 1
                log.info("pipeline %s/%s started", spec.name, model.name)
            pipeline.viewers += 1
            self._ensure_watchdog()
            return pipeline

    def hold(self, spec: SourceSpec, model: ModelEntry, notice: str = "") -> AIProcessor:
        """Keep a pipeline running with no viewer (a source's `always_on`), until stop_all."""
        pipeline = self.acquire(spec, model, notice)
        pipeline.held += 1
        return pipeline

    def _opener(self, spec: SourceSpec) -> Callable[[], FrameSource]:
        return lambda: open_source(spec, self.width, self.height, self.fps, self.open_timeout, self.read_timeout)

    async def release(self, pipeline: AIProcessor) -> None:
        """One viewer left; the last one stops the pipeline (and the capture if unused)."""
        to_stop: list = []
        with self._lock:
            pipeline.viewers -= 1
            key = (pipeline.source, pipeline.model)
            if pipeline.viewers > 0 or self._pipelines.get(key) is not pipeline:
                return
            del self._pipelines[key]
            to_stop.append(pipeline)
            self._capture_users[pipeline.source] -= 1
            if self._capture_users[pipeline.source] == 0:
                to_stop.append(self._captures.pop(pipeline.source))
                del self._capture_users[pipeline.source]
        # joining threads blocks: keep it off the event loop
        await asyncio.to_thread(_stop_all, to_stop)
        log.info("pipeline %s/%s stopped", pipeline.source, pipeline.model)

    # -- shutdown (blocking) --------------------------------------------------
    def stop_all(self) -> None:
        with self._lock:
            items = list(self._pipelines.values()) + list(self._captures.values())
            self._pipelines.clear()
            self._captures.clear()
            self._capture_users.clear()
            watchdog, self._watchdog = self._watchdog, None
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

    # -- stats ----------------------------------------------------------------
    def capture_for(self, source: str) -> Optional[Capture]:
        return self._captures.get(source)

    def pipelines_for(self, source: str) -> list[AIProcessor]:
        with self._lock:
            return [p for (name, _), p in self._pipelines.items() if name == source]

    def stats(self) -> dict:
        with self._lock:
            return {
                "captures_started": self.captures_started,
                "pipelines_started": self.pipelines_started,
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


def _stop_all(items: list) -> None:
    for item in items:
        item.stop()
