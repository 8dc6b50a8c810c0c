"""`AIProcessor`: the pipeline of one (source, model), shared by every viewer of it.

    capture thread (per source) ──slot──► process stage ──slot──► ticker (clock) ──ring──► viewers
                                          (model + overlay)       (TARGET_FPS, I420, one
                                                 │                 encode per codec in use)
                                                 └──► fan-out of results ──► detections channels

    camera mode: the viewer's camera ──slot──► process stage: model, overlay, I420 and encode in
    its one thread (`Ticker.publish`, no clock thread) ──ring──► its viewer, then its detections.

It is a short composition of single-job parts from `pipeline/`: `ProcessStage` (the process
thread), `Ticker` (the clock thread, or in camera mode `publish`, and the ring of ticks),
`EncoderPool` (shared encoders by codec) and `ResultFanout` (results to listeners on the event
loop). This class wires them and
gives viewers one surface to use.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

import numpy as np

from core.metrics import NOOP
from core.slots import LatestSlot
from core.workers import Worker
from pipeline.encoder_pool import EncoderPool
from pipeline.encoders import EncodeSettings
from pipeline.fanout import ResultFanout
from pipeline.frames import VIDEO_CLOCK_RATE, OutFrame, ProcessedFrame
from pipeline.stage import ProcessStage, StageMeters
from pipeline.ticker import Ticker

__all__ = ["AIProcessor", "EncodeSettings", "OutFrame", "ProcessedFrame", "StageMeters", "VIDEO_CLOCK_RATE"]


def _camera_publisher(ticker: Ticker, fanout: ResultFanout, current: Callable[[], bool]):
    """Camera mode, on the process thread: each result is encoded and goes out first, then its
    detections message (also if the encode failed: the stage records the fault). A closure, not
    a method: the stage holding a bound method of the `AIProcessor` that holds the stage would
    keep a closed session's pipeline (and its camera) alive until the collector's next pass."""
    def publish(result: ProcessedFrame) -> None:
        try:
            ticker.publish(result, current)
        finally:
            fanout.publish(result)
    return publish


class AIProcessor:
    def __init__(self, capture: Any, processor: Any, model: str, fps: int, notice: str = "",
                 on_timing: Optional[Callable[[float], None]] = None,
                 encode: EncodeSettings = EncodeSettings(), meters: Optional[StageMeters] = None,
                 sent_counter: Any = NOOP) -> None:
        self.capture = capture  # sources.capture.Capture: its slot, state and measured fps
        self.source = capture.spec.name
        self.model = model
        self.fps = fps
        self.width, self.height = capture.width, capture.height
        self.viewers = 0  # sessions watching, plus holds (always_on)
        self.held = 0
        self.sent_counter = sent_counter  # frames sent to viewers, for /metrics (each viewer counts)
        tag = f"{self.source}-{self.model}"
        self.encoders = EncoderPool(self.width, self.height, fps, encode)
        self.fanout: ResultFanout[ProcessedFrame] = ResultFanout()
        results: LatestSlot[ProcessedFrame] = LatestSlot()
        # a viewer's own camera (camera mode): each result goes out when ready, no output clock
        self.ticker = Ticker(f"vg-clock-{tag}", fps, self.width, self.height, results, lambda: capture.state,
                             self.encoders, on_results=capture.spec.kind == "camera")
        stage_worker: list[Worker] = []  # (the stage's own, once made)
        self.stage = ProcessStage(
            f"vg-proc-{tag}", capture.slot, processor, model, self.width, self.height, notice,
            source_fps=lambda: capture.measured_fps, next_pts=self.ticker.next_pts,
            on_result=(_camera_publisher(self.ticker, self.fanout, lambda: stage_worker[0].is_current())
                       if self.ticker.on_results else self.fanout.publish),
            on_timing=on_timing, results=results, meters=meters)
        stage_worker.append(self.stage.worker)
        if self.ticker.on_results:  # its encoder runs in the stage's thread: faults count there
            self.encoders.on_error = self.stage.worker.record

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fanout.start(loop)
        self.ticker.start(loop)
        self.stage.worker.start()

    def stop(self) -> None:
        """Stop and join the threads (blocking: call it off the event loop)."""
        self.stage.worker.stop()
        self.fanout.stop()
        self.ticker.stop()

    @property
    def workers(self) -> list[Worker]:
        if self.ticker.on_results:  # camera mode: no clock thread (the stage publishes)
            return [self.stage.worker]
        return [self.stage.worker, self.ticker.worker]

    @property
    def last_error(self) -> Optional[str]:
        return self.stage.worker.last_error or self.ticker.worker.last_error

    # -- for viewers (event loop) -------------------------------------------------------
    async def wait_tick(self) -> None:
        await self.ticker.wait_tick()

    async def next_frame(self) -> OutFrame:
        """The newest tick after the current one (for viewers that take frames)."""
        await self.ticker.wait_tick()
        return self.ticker.newest()

    def newest(self) -> Optional[OutFrame]:
        return self.ticker.newest()

    def after(self, seq: int) -> tuple[Optional[OutFrame], bool]:
        return self.ticker.after(seq)

    def recent_keyframe(self, codec: str, ticks: int) -> Optional[OutFrame]:
        return self.ticker.recent_keyframe(codec, ticks)

    def use_codec(self, codec: str, viewer: Optional[int] = None) -> None:
        self.encoders.use(codec, viewer)

    def drop_codec(self, codec: str, viewer: Optional[int] = None) -> None:
        self.encoders.drop(codec, viewer)

    def request_keyframe(self, codec: str, join: bool = False, broken: Optional[int] = None) -> None:
        self.encoders.request_keyframe(codec, join, broken)

    def add_tap(self, tap: Callable[[OutFrame], None]) -> None:
        """Call `tap` on the publishing thread (clock, or camera mode's process thread) with every
        published tick (it must never block)."""
        self.ticker.add_tap(tap)

    def remove_tap(self, tap: Callable[[OutFrame], None]) -> None:
        self.ticker.remove_tap(tap)

    def add_listener(self, listener: Callable[[ProcessedFrame], None]) -> None:
        """Call `listener` (on the loop) with each new processing result."""
        self.fanout.add(listener)

    def remove_listener(self, listener: Callable[[ProcessedFrame], None]) -> None:
        self.fanout.remove(listener)

    def latest_image(self) -> Optional[np.ndarray]:
        """The newest processed frame (BGR, read-only), or None before the first."""
        processed = self.stage.results.peek()[1]
        return processed.image if processed is not None else None

    # -- stats --------------------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "source": self.source,
            "model": self.model,
            "viewers": self.viewers - self.held,
            "always_on": bool(self.held),
            **self.stage.stats(),
            "ticks": self.ticker.ticks,
            "tap_errors": self.ticker.tap_errors,
            "last_error": self.last_error,
            "notice": self.stage.notice or None,
            "encoders": self.encoders.stats(),
        }
