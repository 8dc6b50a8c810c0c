"""The clock: a thread that owns a pipeline's output rate.

Every 1/fps it publishes the newest processed frame as an `OutFrame` (repeating it when the
source is slower or stalled, a placeholder before the first one), converted once to I420 and
encoded once per codec in use, into a short ring (`RING_TICKS`), and wakes the event loop
through a one-deep hand-off. Viewers read the ring on the loop: one that takes frames takes the
newest; one that takes encoded packets takes them in order, so a brief stall costs it nothing,
and one that falls further behind than the ring jumps to the newest. Nothing grows.

In camera mode (`on_results=True`, CONTRACT "Camera mode output") there is no clock and no
clock thread: the process stage calls `publish` with each new processed frame as soon as it is
ready, so frame → model → overlay → I420 → encode → packetise run in that one thread; the frame
is stamped with the time it was ready (its pts from the wall clock), never waits for a tick and
is never sent twice; when the model is slower than the camera the stage has already skipped the
stale frames.

Taps (`add_tap`) get every published tick on the publishing thread itself (the clock thread;
in camera mode the process thread), in order, with no gap but the clock's own skipped ticks (a
recorder): a tap must return at once (a non-blocking hand-off) and whatever it raises is counted
(`tap_errors`) and never reaches the clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError

from core.slots import LatestSlot, LoopHandoff
from core.workers import Worker
from pipeline.encoder_pool import EncoderPool
from pipeline.frames import VIDEO_CLOCK_RATE, OutFrame, ProcessedFrame
from pipeline.overlay import draw_status, placeholder

log = logging.getLogger("visionguard.ticker")

RING_TICKS = 8  # how far (in ticks) a viewer of encoded packets may lag without a keyframe
PLACEHOLDER_TEXT = {"reconnecting": "reconnecting to source...", "failed": "source unavailable, retrying..."}


class Ticker:
    def __init__(self, name: str, fps: int, width: int, height: int, results: LatestSlot[ProcessedFrame],
                 source_state: Callable[[], str], encoders: EncoderPool, on_results: bool = False) -> None:
        self.fps, self.width, self.height = fps, width, height
        self.on_results = on_results  # camera mode: publish each result when it is ready, no clock
        self._results = results
        self._source_state = source_state
        self._encoders = encoders
        self.ticks = 0
        self._ring: deque[OutFrame] = deque(maxlen=RING_TICKS)
        self._ring_lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._next: Optional[asyncio.Future] = None
        self._handoff: Optional[LoopHandoff[int]] = None
        self._closed = False
        self._t0 = time.monotonic()
        self._last_tick = -1
        self._last_pts = -1
        self._shown_key: tuple = ()
        self._shown_i420: Optional[np.ndarray] = None
        self._taps: tuple[Callable[[OutFrame], None], ...] = ()  # replaced whole: the clock reads it unlocked
        self._taps_lock = threading.Lock()
        self.tap_errors = 0
        self.worker = Worker(name, self._step)
        encoders.on_error = self.worker.record

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._next = loop.create_future()
        self._handoff = LoopHandoff(loop, self._deliver)
        self._t0 = time.monotonic()
        if not self.on_results:  # camera mode: the process stage publishes (`publish`)
            self.worker.start()

    def stop(self) -> None:
        """Stop and join the thread (blocking), then fail the viewers still waiting."""
        self._closed = True
        self.worker.stop()
        self._handoff = None  # it holds a bound method of this ticker: no cycle after stop
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._fail_waiters)
            except RuntimeError:  # loop already closed
                pass

    def next_pts(self) -> int:
        """pts of the first tick from now (lets a result be matched to the video that shows it);
        in camera mode, now: the result is sent with it as soon as it is ready."""
        if self.on_results:
            return max(int((time.monotonic() - self._t0) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        tick = int((time.monotonic() - self._t0) * self.fps) + 1
        return tick * VIDEO_CLOCK_RATE // self.fps

    # -- taps (any thread) --------------------------------------------------------------
    def add_tap(self, tap: Callable[[OutFrame], None]) -> None:
        """Call `tap(out)` on the publishing thread with each tick published from now on."""
        with self._taps_lock:
            self._taps = (*self._taps, tap)

    def remove_tap(self, tap: Callable[[OutFrame], None]) -> None:
        """Stop calling `tap` (a call already under way on the clock thread may still finish)."""
        with self._taps_lock:
            self._taps = tuple(t for t in self._taps if t != tap)

    def _call_taps(self, out: OutFrame) -> None:
        for tap in self._taps:
            try:
                tap(out)
            except Exception:  # a tap never breaks the clock
                self.tap_errors += 1
                if self.tap_errors == 1 or self.tap_errors % 1000 == 0:
                    log.exception("a tick tap failed (%d so far)", self.tap_errors)

    # -- for viewers (event loop) -----------------------------------------------------
    async def wait_tick(self) -> None:
        """Return when the clock has published a new tick."""
        if self._closed or self._next is None:
            raise MediaStreamError
        # shield: one viewer's cancellation must not cancel the future the others wait on
        await asyncio.shield(self._next)

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

    def recent_keyframe(self, codec: str, ticks: int) -> Optional[OutFrame]:
        """The newest ringed tick whose `codec` packet is a keyframe, if it is at most `ticks`
        ticks older than the newest tick."""
        with self._ring_lock:
            if not self._ring:
                return None
            newest = self._ring[-1].seq
            for out in reversed(self._ring):
                if newest - out.seq > ticks:
                    return None
                encoded = out.encoded.get(codec)
                if encoded is not None and encoded.keyframe:
                    return out
        return None

    def _deliver(self, tick: int) -> None:
        if self._closed:
            return
        fut, self._next = self._next, self._loop.create_future()
        fut.set_result(tick)

    def _fail_waiters(self) -> None:
        # Let go of the future first: once raised in a waiter, the exception's traceback holds
        # that waiter's frames, and a ticker still holding the future would make a cycle.
        fut, self._next = self._next, None
        if fut is not None and not fut.done():
            fut.set_exception(MediaStreamError())
            fut.exception()  # mark retrieved: nobody may be waiting

    # -- clock thread -------------------------------------------------------------------
    def _step(self) -> None:
        # Sleep to the next tick boundary; after a stall, skip the missed ticks (pts stay true
        # to wall time) instead of bursting them out.
        elapsed = time.monotonic() - self._t0
        tick = max(int(elapsed * self.fps) + 1, self._last_tick + 1)
        self.worker.stop_event.wait(max(0.0, self._t0 + tick / self.fps - time.monotonic()))
        if self.worker.stop_event.is_set():
            return
        seq, processed = self._results.peek()
        self._publish(seq, processed, tick, tick * VIDEO_CLOCK_RATE // self.fps, self.worker.is_current)

    # -- camera mode: the process stage's thread --------------------------------------------
    def publish(self, processed: ProcessedFrame, current: Callable[[], bool]) -> None:
        """Publish this result now, on the calling thread (camera mode: the process stage's;
        `current` tells whether it is still that stage's current thread, not one a restart left
        behind). The encoder's frame count just grows; the pts is the one its detections message
        names."""
        if self._closed:
            return
        tick = max(int((time.monotonic() - self._t0) * self.fps), self._last_tick + 1)
        self._publish(self.ticks + 1, processed, tick, max(processed.pts, self._last_pts + 1), current)

    def _publish(self, seq: int, processed: Optional[ProcessedFrame], tick: int, pts: int,
                 current: Callable[[], bool]) -> None:
        self._last_tick, self._last_pts = tick, pts
        self.ticks += 1
        state = self._source_state()
        notice = state if state in ("reconnecting", "failed") else ""
        if (seq, notice) != self._shown_key:
            self._shown_i420 = self._render(processed, notice)
            self._shown_key = (seq, notice)
        out = OutFrame(
            seq=self.ticks, tick=tick, pts=pts,
            frame_id=processed.frame_id if processed else 0,
            ts=processed.ts if processed else time.time(),
            i420=self._shown_i420, width=self.width, height=self.height,
            encoded=self._encoders.encode(self._shown_i420, tick, pts),
        )
        handoff = self._handoff  # None once stopped
        if not current() or handoff is None:
            return  # left behind by a restart (it was stuck): the new thread publishes
        with self._ring_lock:
            self._ring.append(out)
        handoff.put(tick)
        if self._taps:
            self._call_taps(out)

    def _render(self, processed: Optional[ProcessedFrame], notice: str) -> np.ndarray:
        if processed is None:
            bgr = placeholder(self.width, self.height, PLACEHOLDER_TEXT.get(notice, "connecting to source..."))
        elif notice:
            bgr = draw_status(processed.image, time.strftime("%H:%M:%S"), notice)
        else:
            bgr = processed.image
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        i420.flags.writeable = False
        return i420
