"""`AIProcessor`: the pipeline of one (source, model), shared by every viewer of it.

    capture thread (per source) ──slot──► process thread ──slot──► clock thread ──► viewers
                                          (model + overlay)        (TARGET_FPS, I420)

- The process thread takes the newest captured frame, runs the model once on it and draws
  the status band; frames that arrived meanwhile are skipped, never queued.
- The clock thread owns the output rate: every tick it publishes the newest processed frame
  (repeating it when the source is slower or stalled, a placeholder before the first one),
  converted once to I420 and, in shared encode mode, encoded once per codec in use
  (`encoders.py`) for every viewer.
- Ticks go into a short ring (`RING_TICKS`); the event loop is woken through a one-deep
  hand-off. Viewers (`ai_stream.AIProcessedStream`) read the ring on the loop: a viewer that
  takes frames takes the newest; a viewer that takes encoded packets takes them in order, so
  a brief stall costs it nothing, and one that falls further behind than the ring jumps to
  the newest tick and waits for a keyframe. Nothing grows.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError

from detectors import Detection, Processor
from encoders import EncodedFrame, SharedEncoder
from meters import RateMeter
from overlay import draw_status, placeholder, render
from slots import LatestSlot, LoopHandoff
from sources.capture import Capture
from workers import Worker

VIDEO_CLOCK_RATE = 90000  # RTP video clock: pts are in 1/90000 s
RING_TICKS = 8  # how far (in ticks) a viewer of encoded packets may lag without a keyframe


@dataclass(frozen=True)
class ProcessedFrame:
    frame_id: int
    ts: float
    image: np.ndarray  # BGR with overlay, read-only
    detections: list[Detection]
    inference_ms: float
    message: str  # the `detections` DataChannel message, serialised once for every viewer


@dataclass(frozen=True)
class OutFrame:
    """One clock tick as every viewer receives it. `i420` is shared and read-only."""

    seq: int  # consecutive count of published ticks: a gap means a viewer missed some
    tick: int
    pts: int  # 90 kHz
    frame_id: int  # source frame shown (0 before the first one)
    ts: float  # Unix seconds at capture of that frame
    i420: np.ndarray
    width: int
    height: int
    encoded: dict[str, EncodedFrame] = field(default_factory=dict)  # codec → shared packet


@dataclass(frozen=True)
class EncodeSettings:
    bitrate: int = 1_000_000
    keyframe_interval_s: float = 2.0


class AIProcessor:
    def __init__(self, capture: Capture, processor: Processor, model: str, fps: int, notice: str = "",
                 on_timing: Optional[Callable[[float], None]] = None,
                 encode: EncodeSettings = EncodeSettings()) -> None:
        self.capture = capture
        self.processor = processor
        self.source = capture.spec.name
        self.model = model
        self.fps = fps
        self.notice = notice  # shown in every frame's status band (e.g. a model fallback)
        self._on_timing = on_timing
        self.width, self.height = capture.width, capture.height
        self.viewers = 0  # sessions watching, plus holds (always_on)
        self.held = 0
        # counters, read by /info
        self.frames_processed = 0
        self.frames_skipped = 0
        self.ticks = 0
        self.inference_ms = 0.0  # moving mean
        self.process_rate = RateMeter()

        self._processed: LatestSlot[ProcessedFrame] = LatestSlot()
        self._seen_capture = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._next: Optional[asyncio.Future] = None
        self._closed = False
        self._ticks: Optional[LoopHandoff[int]] = None
        self._ring: deque[OutFrame] = deque(maxlen=RING_TICKS)
        self._ring_lock = threading.Lock()
        # shared encoders, by codec, with how many viewers use each
        self._encode = encode
        self.encoders: dict[str, SharedEncoder] = {}
        self._codec_users: dict[str, int] = {}
        self._encoders_lock = threading.Lock()
        self._results: Optional[LoopHandoff[ProcessedFrame]] = None
        self._listeners: list[Callable[[ProcessedFrame], None]] = []
        # clock state
        self._t0 = 0.0
        self._last_tick = -1
        self._shown_key: tuple = ()
        self._shown_i420: Optional[np.ndarray] = None

        tag = f"{self.source}-{self.model}"
        self.proc_worker = Worker(f"vg-proc-{tag}", self._process_step)
        self.clock_worker = Worker(f"vg-clock-{tag}", self._clock_step)

    # -- lifecycle (called on the event loop / from a helper thread) -------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._next = loop.create_future()
        self._ticks = LoopHandoff(loop, self._deliver)
        self._results = LoopHandoff(loop, self._deliver_result)
        self._t0 = time.monotonic()
        self.proc_worker.start()
        self.clock_worker.start()

    def stop(self) -> None:
        """Stop and join the threads (blocking: call it off the event loop)."""
        self._closed = True
        self.proc_worker.stop()
        self.clock_worker.stop()
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._fail_waiters)
            except RuntimeError:  # loop already closed
                pass

    @property
    def workers(self) -> list[Worker]:
        return [self.proc_worker, self.clock_worker]

    @property
    def last_error(self) -> Optional[str]:
        return self.proc_worker.last_error or self.clock_worker.last_error

    # -- for viewers (event loop) -----------------------------------------
    async def wait_tick(self) -> None:
        """Return when the clock has published a new tick."""
        if self._closed or self._next is None:
            raise MediaStreamError
        # shield: one viewer's cancellation must not cancel the future the others wait on
        await asyncio.shield(self._next)

    async def next_frame(self) -> OutFrame:
        """The newest tick after the current one (for viewers that take frames)."""
        await self.wait_tick()
        return self.newest()

    def newest(self) -> Optional[OutFrame]:
        with self._ring_lock:
            return self._ring[-1] if self._ring else None

    def after(self, seq: int) -> tuple[Optional[OutFrame], bool]:
        """The oldest ringed tick published after `seq`, and whether some in between are gone."""
        with self._ring_lock:
            for out in self._ring:
                if out.seq > seq:
                    return out, out.seq != seq + 1
        return None, False

    # -- shared encoding (event loop side) ----------------------------------
    def use_codec(self, codec: str) -> None:
        with self._encoders_lock:
            self._codec_users[codec] = self._codec_users.get(codec, 0) + 1

    def drop_codec(self, codec: str) -> None:
        with self._encoders_lock:
            self._codec_users[codec] -= 1

    def request_keyframe(self, codec: str) -> None:
        encoder = self.encoders.get(codec)
        if encoder is not None:
            encoder.request_keyframe()

    def _fail_waiters(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_exception(MediaStreamError())
            self._next.exception()  # mark retrieved: nobody may be waiting

    def add_listener(self, listener: Callable[[ProcessedFrame], None]) -> None:
        """Call `listener` (on the loop) with each new processing result."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ProcessedFrame], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _deliver(self, tick: int) -> None:
        if self._closed:
            return
        fut, self._next = self._next, self._loop.create_future()
        fut.set_result(tick)

    def _deliver_result(self, result: ProcessedFrame) -> None:
        for listener in list(self._listeners):
            listener(result)

    # -- process thread ----------------------------------------------------
    def _process_step(self) -> None:
        seq, cap = self.capture.slot.wait_newer(self._seen_capture, timeout=0.25)
        if cap is None or seq <= self._seen_capture:
            return
        if self._seen_capture:
            self.frames_skipped += seq - self._seen_capture - 1
        self._seen_capture = seq
        t0 = time.perf_counter()
        image, detections = self.processor.process(cap.image)
        ms = (time.perf_counter() - t0) * 1000
        self.inference_ms = ms if not self.frames_processed else 0.9 * self.inference_ms + 0.1 * ms
        if self._on_timing:
            self._on_timing(ms)
        self.frames_processed += 1
        self.process_rate.tick()
        text = (f"{time.strftime('%H:%M:%S', time.localtime(cap.ts))}  {self.capture.measured_fps:4.1f} fps  "
                f"{self.model} {self.process_rate.rate:4.1f}/s {self.inference_ms:.0f} ms")
        image = render(image, detections, text, self.notice)
        image.flags.writeable = False
        result = ProcessedFrame(cap.frame_id, cap.ts, image, detections, ms, self._message(cap, detections, ms))
        self._processed.put(result)
        if self._listeners:
            self._results.put(result)

    def _message(self, cap, detections: list[Detection], ms: float) -> str:
        # pts of the first tick that will show this frame, so clients can match it to the video
        tick = int((time.monotonic() - self._t0) * self.fps) + 1
        return json.dumps({
            "frame_id": cap.frame_id, "pts": tick * VIDEO_CLOCK_RATE // self.fps, "ts": round(cap.ts, 3),
            "model": self.model, "inference_ms": round(ms, 2), "width": self.width, "height": self.height,
            "detections": [{"label": d.label, "score": round(d.score, 3), "box": list(d.box)} for d in detections],
        }, separators=(",", ":"))

    # -- clock thread ------------------------------------------------------
    def _clock_step(self) -> None:
        # Sleep to the next tick boundary; after a stall, skip the missed ticks (pts stay true
        # to wall time) instead of bursting them out.
        elapsed = time.monotonic() - self._t0
        tick = max(int(elapsed * self.fps) + 1, self._last_tick + 1)
        self.clock_worker.stop_event.wait(max(0.0, self._t0 + tick / self.fps - time.monotonic()))
        if self.clock_worker.stop_event.is_set():
            return
        self._last_tick = tick
        self.ticks += 1

        seq, processed = self._processed.peek()
        notice = self.capture.state if self.capture.state in ("reconnecting", "failed") else ""
        key = (seq, notice)
        if key != self._shown_key:
            self._shown_i420 = self._render(processed, notice)
            self._shown_key = key
        pts = tick * VIDEO_CLOCK_RATE // self.fps
        out = OutFrame(
            seq=self.ticks, tick=tick, pts=pts,
            frame_id=processed.frame_id if processed else 0,
            ts=processed.ts if processed else time.time(),
            i420=self._shown_i420, width=self.width, height=self.height,
            encoded=self._encode_tick(self._shown_i420, tick, pts),
        )
        with self._ring_lock:
            self._ring.append(out)
        self._ticks.put(tick)

    def _encode_tick(self, i420: np.ndarray, tick: int, pts: int) -> dict[str, EncodedFrame]:
        """Encode this tick once for each codec that shared-mode viewers use."""
        with self._encoders_lock:
            for codec, users in self._codec_users.items():
                if users > 0 and codec not in self.encoders:
                    self.encoders[codec] = SharedEncoder(codec, self.width, self.height, self.fps,
                                                         self._encode.bitrate, self._encode.keyframe_interval_s)
                elif users <= 0 and codec in self.encoders:
                    del self.encoders[codec]
            encoders = list(self.encoders.values())
        encoded = {}
        for encoder in encoders:
            try:
                encoded[encoder.codec] = encoder.encode(i420, tick, pts)
            except Exception as exc:  # a broken encoder is replaced (from a keyframe) next tick
                self.clock_worker.last_error = f"{encoder.codec} encoder: {type(exc).__name__}: {exc}"
                with self._encoders_lock:
                    if self.encoders.get(encoder.codec) is encoder:
                        del self.encoders[encoder.codec]
        return encoded

    def _render(self, processed: Optional[ProcessedFrame], notice: str) -> np.ndarray:
        if processed is None:
            msg = {"reconnecting": "reconnecting to source...",
                   "failed": "source unavailable, retrying..."}.get(notice, "connecting to source...")
            bgr = placeholder(self.width, self.height, msg)
        elif notice:
            bgr = draw_status(processed.image, time.strftime("%H:%M:%S"), notice)
        else:
            bgr = processed.image
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        i420.flags.writeable = False
        return i420

    def latest_image(self) -> Optional[np.ndarray]:
        """The newest processed frame (BGR, read-only), or None before the first."""
        processed = self._processed.peek()[1]
        return processed.image if processed is not None else None

    # -- stats -------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "source": self.source,
            "model": self.model,
            "viewers": self.viewers - self.held,
            "always_on": bool(self.held),
            "frames_processed": self.frames_processed,
            "frames_skipped": self.frames_skipped,
            "process_fps": round(self.process_rate.rate, 2),
            "mean_inference_ms": round(self.inference_ms, 2),
            "ticks": self.ticks,
            "last_error": self.last_error,
            "notice": self.notice or None,
            "encoders": [e.stats() for e in list(self.encoders.values())],
        }
