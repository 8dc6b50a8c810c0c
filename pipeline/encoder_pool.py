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


class EncoderPool:
    def __init__(self, width: int, height: int, fps: int, settings: EncodeSettings = EncodeSettings(),
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.settings = settings
        self.on_error = on_error  # where faults are recorded (the clock thread's worker)
        self.encoders: dict[str, SharedEncoder] = {}
        self._users: dict[str, int] = {}  # codec → viewers using it
        self._broken: dict[str, set[int]] = {}  # codec → viewers waiting for a keyframe after a PLI
        self._lock = threading.Lock()  # viewers come and go on the loop; the clock thread encodes
        # one clock thread encodes at a time: a restart may leave a stuck one behind, and an
        # encoder's context must never be used by two threads at once
        self._encoding = threading.Lock()
        self._retry: dict[str, tuple[float, float]] = {}  # codec → (not before, next delay) after a failure
        #: codec → (consecutive failed attempts, the last error), while it keeps failing: /health
        self.failing: dict[str, tuple[int, str]] = {}

    # -- event loop side --------------------------------------------------------------
    def use(self, codec: str) -> None:
        with self._lock:
            self._users[codec] = self._users.get(codec, 0) + 1

    def drop(self, codec: str) -> None:
        with self._lock:
            self._users[codec] -= 1

    def request_keyframe(self, codec: str, broken: Optional[int] = None) -> None:
        """Ask for a keyframe of `codec`. For a joining viewer (`broken` None) it comes with the
        next tick the encoder's rate limit allows. For a viewer whose picture broke (PLI/FIR:
        `broken` names it) only once at least a quarter of the codec's viewers wait for one
        (a lone viewer always): otherwise that viewer waits for the periodic keyframe, and one
        viewer's packet loss does not cost every other viewer a keyframe."""
        encoder = self.encoders.get(codec)
        if encoder is None:
            return
        if broken is not None:
            with self._lock:
                waiting = self._broken.setdefault(codec, set())
                waiting.add(broken)
                if len(waiting) * BROKEN_SHARE < self._users.get(codec, 0):
                    encoder.deferred_requests += 1
                    return
        encoder.request_keyframe()

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
                encoded[codec] = encoder.encode(i420, tick, pts)
                if encoded[codec].keyframe and self._broken.get(codec):
                    with self._lock:
                        self._broken.pop(codec, None)  # every broken viewer starts again from it
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

    def stats(self) -> list[dict]:
        return [e.stats() for e in list(self.encoders.values())]
