"""One capture per source: a thread reads the source once, resizes each frame to the
output size and puts it in a latest-value slot that every pipeline of that source reads.

When the source fails (cannot open, errors, ends, stalls past its read timeout) the capture
closes it and tries again forever, with exponential backoff and jitter from 0.5 s up to
`retry_max_s`. The backoff resets once the source has delivered good frames for a few seconds.
State: `idle` (not started), `live`, `reconnecting` (was live, trying again), `failed` (has not
opened yet, trying again); `last_error` says why, credentials redacted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from core.meters import RateMeter
from core.metrics import NOOP
from core.redact import redact
from core.slots import LatestSlot
from core.workers import Worker
from sources.base import FrameSource, SourceError
from sources.spec import SourceSpec

log = logging.getLogger("visionguard.capture")

RETRY_MIN_S = 0.5
RESET_AFTER_S = 3.0  # this long live before a failure → the next retry starts from RETRY_MIN_S


@dataclass(frozen=True)
class CapturedFrame:
    frame_id: int  # strictly increasing per capture
    ts: float  # Unix seconds at capture
    image: np.ndarray  # BGR, output size, read-only


class Capture:
    def __init__(self, spec: SourceSpec, source_factory: Callable[[], FrameSource], width: int, height: int,
                 fps: float, retry_max_s: float = 30.0, after: Optional[threading.Event] = None,
                 frames_counter=NOOP, reconnects_counter=NOOP) -> None:
        self.spec = spec
        self._factory = source_factory
        self.width, self.height, self.default_fps = width, height, fps
        self.retry_max_s = retry_max_s
        self.slot: LatestSlot[CapturedFrame] = LatestSlot()
        self.state = "idle"
        self.last_error: Optional[str] = None
        self.opens = 0
        self.frames = 0
        self.failures = 0
        self.native_size: Optional[tuple[int, int]] = None
        self.retry_delays: deque[float] = deque(maxlen=20)  # the backoff as it happened, for /info and tests
        self.rate = RateMeter()
        self._frames_counter, self._reconnects_counter = frames_counter, reconnects_counter  # /metrics
        self._source: Optional[FrameSource] = None
        self._retry = RETRY_MIN_S
        self._due = 0.0
        self._live_since = 0.0
        self._after = after  # set once the previous capture of this source has let go of it
        #: set when this capture's thread has closed its source and ended
        self.released = threading.Event()
        self.worker = Worker(f"vg-cap-{spec.name}", self._step, self._on_error, on_exit=self._exit)

    @property
    def measured_fps(self) -> float:
        return self.rate.rate

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Stop the thread (blocking); the thread closes its own source as it ends."""
        self.worker.stop()
        self.slot.wake()
        self.state = "idle"

    def _exit(self) -> None:
        self._close()
        self.released.set()

    def _on_error(self, message: str) -> None:
        self.last_error = redact(message)

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
        self.native_size = (image.shape[1], image.shape[0])
        if image.shape[1] != self.width or image.shape[0] != self.height:
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        image.flags.writeable = False  # shared by every pipeline: nobody draws on it
        self.frames += 1
        self._frames_counter.inc()
        self.slot.put(CapturedFrame(self.frames, time.time(), image))
        self.rate.tick()
        if self.state != "live":
            self.state, self._live_since = "live", time.monotonic()
            log.info("source %s is live", self.spec.name)

    def _open(self) -> None:
        if self._after is not None and not self._after.is_set():
            # the previous capture of this source is still closing it (a V4L2 device opens once)
            self._after.wait(0.25)
            return
        source = self._factory()
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
        """Close, record, and wait (exponential backoff with jitter) before the next open."""
        self._close()
        self.failures += 1
        self._reconnects_counter.inc()  # every failure is followed by another open
        self.last_error = redact(message)
        if self.state == "live" and time.monotonic() - self._live_since >= RESET_AFTER_S:
            self._retry = RETRY_MIN_S
        self.state = "reconnecting" if self.opens else "failed"
        delay = min(self._retry, self.retry_max_s) * random.uniform(0.8, 1.2)
        self.retry_delays.append(delay)
        log.warning("source %s: %s; retrying in %.1f s", self.spec.name, self.last_error, delay)
        self.worker.stop_event.wait(delay)
        self._retry = min(self._retry * 2, self.retry_max_s)

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
