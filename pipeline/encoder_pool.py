"""The shared encoders of one pipeline: one per codec that some viewer uses, created when the
first viewer of that codec arrives and dropped when the last leaves. Each tick is encoded once
per codec (`encode`, on the clock thread). A codec whose encoder fails is left out (the fault
recorded like any stage fault) and replaced, starting from a keyframe, after a backoff that
doubles from `RETRY_MIN_S` to `RETRY_MAX_S`; it never holds up the other codec."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

from pipeline.encoders import EncodedFrame, EncodeSettings, SharedEncoder

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
BROKEN_SHARE = 4  # viewers' PLIs force a shared keyframe once 1 in BROKEN_SHARE of them wait
MAX_BROKEN_WAIT_S = 2.0  # ... or once one has waited this long (KEYFRAME_INTERVAL may be 60 s)


def _waited_too_long(waiting: dict[int, float], now: float) -> bool:
    """Whether a viewer among `waiting` (id → since when) has waited MAX_BROKEN_WAIT_S."""
    return now - min(waiting.values()) >= MAX_BROKEN_WAIT_S


class EncoderPool:
    def __init__(self, width: int, height: int, fps: int, settings: EncodeSettings = EncodeSettings(),
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.settings = settings
        self.on_error = on_error  # where faults are recorded (the clock thread's worker)
        self.encoders: dict[str, SharedEncoder] = {}
        self._users: dict[str, int] = {}  # codec → users: viewers, recorders, pre-rolls
        self._viewers: dict[str, set[int]] = {}  # codec → the ids of the viewers among them
        #: codec → {viewer id: since when} for viewers waiting for a keyframe after a PLI/FIR
        self._broken: dict[str, dict[int, float]] = {}
        self._picture_ids: dict[str, int] = {}  # codec → frames sent: VP8's picture id, kept across encoders
        self._lock = threading.Lock()  # viewers come and go on the loop; the clock thread encodes
        # one clock thread encodes at a time: a restart may leave a stuck one behind, and an
        # encoder's context must never be used by two threads at once
        self._encoding = threading.Lock()
        self._retry: dict[str, tuple[float, float]] = {}  # codec → (not before, next delay) after a failure
        #: codec → (consecutive failed attempts, the last error), while it keeps failing: /health
        self.failing: dict[str, tuple[int, str]] = {}

    # -- event loop side --------------------------------------------------------------
    def use(self, codec: str, viewer: Optional[int] = None) -> None:
        """One more user of `codec` (`viewer`: a viewer's id; else a recorder or pre-roll)."""
        with self._lock:
            self._users[codec] = self._users.get(codec, 0) + 1
            if viewer is not None:
                self._viewers.setdefault(codec, set()).add(viewer)

    def drop(self, codec: str, viewer: Optional[int] = None) -> None:
        """One user of `codec` is gone (`viewer`: that viewer's id)."""
        with self._lock:
            self._users[codec] -= 1
            if viewer is not None:
                self._viewers.get(codec, set()).discard(viewer)
                self._broken.get(codec, {}).pop(viewer, None)

    def request_keyframe(self, codec: str, join: bool = False, broken: Optional[int] = None) -> None:
        """Ask for a keyframe of `codec`, for a joining viewer (`join`), a viewer that fell behind,
        or a recorder: it comes with the next tick the encoder's rate limit allows. For a viewer
        whose picture broke (PLI/FIR: `broken` is its id) only once at least a quarter of the
        codec's viewers wait for one (a lone viewer always), or one has waited
        `MAX_BROKEN_WAIT_S`: until then the periodic keyframe serves it, and one viewer's packet
        loss does not cost every other viewer a keyframe."""
        encoder = self.encoders.get(codec)
        if encoder is None:
            return
        if broken is not None:
            now = time.monotonic()
            with self._lock:
                viewers = self._viewers.get(codec, set())
                if broken not in viewers:
                    return  # a PLI that arrived after its viewer left
                waiting = self._broken.setdefault(codec, {})
                waiting.setdefault(broken, now)
                if len(waiting) * BROKEN_SHARE < len(viewers) and not _waited_too_long(waiting, now):
                    encoder.deferred_requests += 1
                    return
        encoder.request_keyframe(join=join)

    def get(self, codec: str) -> Optional[SharedEncoder]:
        return self.encoders.get(codec)

    # -- clock thread -----------------------------------------------------------------
    def encode(self, i420: np.ndarray, tick: int, pts: int) -> dict[str, EncodedFrame]:
        """Encode this tick once for each codec in use; a failing codec is left out. While another
        thread is still inside an encoder (a stuck clock being replaced), the tick goes unencoded."""
        if not self._encoding.acquire(timeout=1 / self.fps):
            return {}
        try:
            return self._encode(i420, tick, pts)
        finally:
            self._encoding.release()

    def _encode(self, i420: np.ndarray, tick: int, pts: int) -> dict[str, EncodedFrame]:
        with self._lock:
            wanted = [codec for codec, users in self._users.items() if users > 0]
            for codec in [c for c in self.encoders if c not in wanted]:
                del self.encoders[codec]
            for codec in [c for c in self.failing if c not in wanted]:
                del self.failing[codec]
        encoded = {}
        now = time.monotonic()
        for codec in wanted:
            if codec in self._retry and now < self._retry[codec][0]:
                continue  # backing off after a failure
            try:
                encoder = self.encoders.get(codec)
                if encoder is None:
                    encoder = SharedEncoder(codec, self.width, self.height, self.fps, self.settings.bitrate,
                                            self.settings.keyframe_interval_s)
                    with self._lock:
                        self.encoders[codec] = encoder
                picture_id = self._picture_ids.get(codec, 0)
                encoded[codec] = encoder.encode(i420, tick, pts, picture_id)
                if encoded[codec].payloads:
                    self._picture_ids[codec] = (picture_id + 1) % (1 << 15)
                self._repair(codec, encoder, encoded[codec].keyframe)
                self._retry.pop(codec, None)
                self.failing.pop(codec, None)
            except Exception as exc:  # replaced (from a keyframe) after a backoff; the other codec goes on
                with self._lock:
                    self.encoders.pop(codec, None)
                delay = self._retry.get(codec, (0.0, RETRY_MIN_S))[1]
                self._retry[codec] = (now + delay, min(delay * 2, RETRY_MAX_S))
                message = f"{codec} encoder: {type(exc).__name__}: {exc}"
                self.failing[codec] = (self.failing.get(codec, (0, ""))[0] + 1, message)
                if self.on_error is not None:
                    self.on_error(message)
        return encoded

    def _repair(self, codec: str, encoder: SharedEncoder, keyframe: bool) -> None:
        """After a keyframe, no viewer waits any more; else one that waited too long gets one."""
        waiting = self._broken.get(codec)
        if not waiting:
            return
        now = time.monotonic()
        with self._lock:
            if keyframe:
                waiting.clear()
            elif waiting and _waited_too_long(waiting, now):
                for viewer in waiting:
                    waiting[viewer] = now  # asked once: it comes within the rate limit
                encoder.request_keyframe()

    def stats(self) -> list[dict]:
        return [e.stats() for e in list(self.encoders.values())]
