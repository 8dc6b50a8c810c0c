"""The shared encoders of one pipeline: one per codec that some viewer uses, created when the
first viewer of that codec arrives and dropped when the last leaves. Each tick is encoded once
per codec (`encode`, on the clock thread); a codec whose encoder fails is replaced, starting
from a keyframe, on the next tick, and never holds up the other codec."""

from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from pipeline.encoders import EncodedFrame, EncodeSettings, SharedEncoder


class EncoderPool:
    def __init__(self, width: int, height: int, fps: int, settings: EncodeSettings = EncodeSettings(),
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.settings = settings
        self.on_error = on_error  # where faults are recorded (the clock thread's worker)
        self.encoders: dict[str, SharedEncoder] = {}
        self._users: dict[str, int] = {}  # codec → viewers using it
        self._lock = threading.Lock()  # viewers come and go on the loop; the clock thread encodes

    # -- event loop side --------------------------------------------------------------
    def use(self, codec: str) -> None:
        with self._lock:
            self._users[codec] = self._users.get(codec, 0) + 1

    def drop(self, codec: str) -> None:
        with self._lock:
            self._users[codec] -= 1

    def request_keyframe(self, codec: str) -> None:
        encoder = self.encoders.get(codec)
        if encoder is not None:
            encoder.request_keyframe()

    def get(self, codec: str) -> Optional[SharedEncoder]:
        return self.encoders.get(codec)

    # -- clock thread -----------------------------------------------------------------
    def encode(self, i420: np.ndarray, tick: int, pts: int) -> dict[str, EncodedFrame]:
        """Encode this tick once for each codec in use; a failing codec is left out."""
        with self._lock:
            wanted = [codec for codec, users in self._users.items() if users > 0]
            for codec in [c for c in self.encoders if c not in wanted]:
                del self.encoders[codec]
        encoded = {}
        for codec in wanted:
            try:
                encoder = self.encoders.get(codec)
                if encoder is None:
                    encoder = SharedEncoder(codec, self.width, self.height, self.fps, self.settings.bitrate,
                                            self.settings.keyframe_interval_s)
                    with self._lock:
                        self.encoders[codec] = encoder
                encoded[codec] = encoder.encode(i420, tick, pts)
            except Exception as exc:  # replaced (from a keyframe) next tick; the other codec goes on
                with self._lock:
                    self.encoders.pop(codec, None)
                if self.on_error is not None:
                    self.on_error(f"{codec} encoder: {type(exc).__name__}: {exc}")
        return encoded

    def stats(self) -> list[dict]:
        return [e.stats() for e in list(self.encoders.values())]
