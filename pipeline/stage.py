"""The process stage: a thread that takes the newest captured frame, runs the model on it once,
draws the overlay and puts the result in a latest-value slot. Frames that arrived while the
model ran are skipped (counted), never queued."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from core.meters import RateMeter
from core.metrics import NOOP
from core.slots import LatestSlot
from core.workers import Worker
from pipeline.frames import ProcessedFrame, detections_message
from pipeline.overlay import render


@dataclass
class StageMeters:
    """Where a stage counts for /metrics (`core.metrics` children; nothing by default)."""
    processed: Any = NOOP
    skipped: Any = NOOP
    inference: Any = NOOP


class ProcessStage:
    def __init__(self, name: str, frames: LatestSlot, processor: Any, model: str, width: int, height: int,
                 notice: str = "", source_fps: Callable[[], float] = lambda: 0.0,
                 next_pts: Callable[[], int] = lambda: 0,
                 on_result: Optional[Callable[[ProcessedFrame], None]] = None,
                 on_timing: Optional[Callable[[float], None]] = None,
                 results: Optional[LatestSlot[ProcessedFrame]] = None, meters: "StageMeters | None" = None) -> None:
        self.frames = frames  # the capture's slot of CapturedFrame (frame_id, ts, image)
        self.processor = processor  # `process(bgr) -> (bgr, detections)`
        self.model = model
        self.width, self.height = width, height
        self.notice = notice  # drawn in every frame's status band (e.g. a model fallback)
        self._source_fps = source_fps
        self._next_pts = next_pts  # pts of the first tick that will show a result made now
        self._on_result = on_result
        self._on_timing = on_timing
        self.results: LatestSlot[ProcessedFrame] = results if results is not None else LatestSlot()
        # counters, read by /info
        self.frames_processed = 0
        self.frames_skipped = 0
        self.inference_ms = 0.0  # moving mean
        self.rate = RateMeter()
        self.meters = meters or StageMeters()
        #: consecutive frames the model or overlay failed on (reset by a good one): /health
        self.failed_in_row = 0
        self._seen = 0
        self.worker = Worker(name, self._step)

    def _step(self) -> None:
        seq, cap = self.frames.wait_newer(self._seen, timeout=0.25)
        if cap is None or seq <= self._seen:
            return
        if self._seen and seq - self._seen > 1:
            self.frames_skipped += seq - self._seen - 1
            self.meters.skipped.inc(seq - self._seen - 1)
        self._seen = seq
        self.failed_in_row += 1  # until this frame is through
        t0 = time.perf_counter()
        image, detections = self.processor.process(cap.image)
        ms = (time.perf_counter() - t0) * 1000
        self.meters.inference.observe(ms / 1000)
        self.inference_ms = ms if not self.frames_processed else 0.9 * self.inference_ms + 0.1 * ms
        if self._on_timing:
            self._on_timing(ms)
        self.frames_processed += 1
        self.meters.processed.inc()
        self.rate.tick()
        text = (f"{time.strftime('%H:%M:%S', time.localtime(cap.ts))}  {self._source_fps():4.1f} fps  "
                f"{self.model} {self.rate.rate:4.1f}/s {self.inference_ms:.0f} ms")
        image = render(image, detections, text, self.notice)
        image.flags.writeable = False
        pts = self._next_pts()
        message = detections_message(cap.frame_id, pts, cap.ts, self.model, ms, self.width, self.height, detections)
        result = ProcessedFrame(cap.frame_id, cap.ts, image, detections, ms, message, pts)
        self.failed_in_row = 0
        if not self.worker.is_current():
            return  # a restart replaced this thread while it was stuck: its late result would go back in time
        self.results.put(result)
        if self._on_result:
            self._on_result(result)

    def stats(self) -> dict:
        return {"frames_processed": self.frames_processed, "frames_skipped": self.frames_skipped,
                "process_fps": round(self.rate.rate, 2), "mean_inference_ms": round(self.inference_ms, 2)}
