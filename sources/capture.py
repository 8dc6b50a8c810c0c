"""One capture per source: a thread reads the source once, resizes each frame to the
output size and puts it in a latest-value slot that every pipeline of that source reads."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from meters import RateMeter
from slots import LatestSlot
from sources.base import FrameSource, SourceError
from sources.spec import SourceSpec, open_source
from workers import Worker

log = logging.getLogger("visionguard.capture")

RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0


@dataclass(frozen=True)
class CapturedFrame:
    frame_id: int  # strictly increasing per capture
    ts: float  # Unix seconds at capture
    image: np.ndarray  # BGR, output size, read-only


class Capture:
    def __init__(self, spec: SourceSpec, width: int, height: int, fps: float) -> None:
        self.spec = spec
        self.width, self.height, self.default_fps = width, height, fps
        self.slot: LatestSlot[CapturedFrame] = LatestSlot()
        self.state = "idle"  # idle | live | reconnecting | failed
        self.last_error: Optional[str] = None
        self.opens = 0
        self.frames = 0
        self.rate = RateMeter()
        self._source: Optional[FrameSource] = None
        self._retry = RETRY_MIN_S
        self._due = 0.0
        self.worker = Worker(f"vg-cap-{spec.name}", self._step, self._on_error)

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self._close()
        self.slot.wake()
        self.state = "idle"

    @property
    def measured_fps(self) -> float:
        return self.rate.rate

    def _on_error(self, message: str) -> None:
        self.last_error = message

    # -- the capture loop -----------------------------------------------
    def _step(self) -> None:
        if self._source is None:
            self._open()
            return
        if self._source.paced:
            self._pace(self._source.fps)
        try:
            image = self._source.read()
        except SourceError as exc:
            self._fail(str(exc))
            return
        if image is None:
            return
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        image.flags.writeable = False  # shared by every pipeline: nobody draws on it
        self.frames += 1
        self.slot.put(CapturedFrame(self.frames, time.time(), image))
        self.rate.tick()
        self.state = "live"
        self._retry = RETRY_MIN_S

    def _open(self) -> None:
        source = open_source(self.spec, self.width, self.height, self.default_fps)
        try:
            source.open()
        except SourceError as exc:
            self._fail(str(exc))
            return
        self.opens += 1
        self._source = source
        self._due = time.monotonic()
        log.info("source %s opened (%s, %.1f fps)", self.spec.name, self.spec.kind, source.fps)

    def _fail(self, message: str) -> None:
        """Close, record, and wait (backing off) before the next open."""
        self._close()
        self.last_error = message
        self.state = "reconnecting"
        log.warning("source %s: %s; retrying in %.1f s", self.spec.name, message, self._retry)
        self.worker.stop_event.wait(self._retry)
        self._retry = min(self._retry * 2, RETRY_MAX_S)

    def _pace(self, fps: float) -> None:
        period = 1.0 / (fps or self.default_fps)
        self._due += period
        delay = self._due - time.monotonic()
        if delay > 0:
            self.worker.stop_event.wait(delay)
        elif delay < -period:  # fell behind (busy box): resync rather than burst
            self._due = time.monotonic()

    def _close(self) -> None:
        if self._source is not None:
            try:
                self._source.close()
            except Exception:  # closing a broken source must not raise
                log.debug("close failed", exc_info=True)
            self._source = None
