"""`PreRoll`: the last seconds of a pipeline's shared H.264 packets, back to a keyframe, so that
an event recording can begin before the event (`RECORD_PRE_S`) without decoding anything.

It holds a reference on the pipeline's H.264 encoder while it runs (so the encoder runs with no
H.264 viewer: the price of pre-roll is one H.264 encode per followed source), and a tap on the
clock thread appends each packet to a ring that is trimmed to the newest keyframe at least
`seconds` old. `frames()` is a copy, ready to hand to a `Recorder` as its pre-roll.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from pipeline.encoders import EncodedFrame
from pipeline.frames import VIDEO_CLOCK_RATE, OutFrame

CODEC = "h264"


class PreRoll:
    def __init__(self, pipeline: Any, seconds: float) -> None:
        self.pipeline = pipeline  # model.AIProcessor
        self.span = int(seconds * VIDEO_CLOCK_RATE)  # 90 kHz
        self._ring: deque[EncodedFrame] = deque()
        self._lock = threading.Lock()  # the clock thread appends, the loop copies
        self._running = False

    def start(self) -> None:
        self.pipeline.use_codec(CODEC)
        self.pipeline.add_tap(self._tap)
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.pipeline.remove_tap(self._tap)
            self.pipeline.drop_codec(CODEC)
        with self._lock:
            self._ring.clear()

    def frames(self) -> list[EncodedFrame]:
        """The ring, oldest first: it begins on a keyframe (empty before the first one)."""
        with self._lock:
            return list(self._ring)

    def _tap(self, out: OutFrame) -> None:  # the clock thread: never blocks
        frame = out.encoded.get(CODEC)
        if frame is None:
            return
        with self._lock:
            ring = self._ring
            if not ring and not frame.keyframe:
                return  # a pre-roll must begin on a keyframe
            ring.append(frame)
            # drop the oldest GOP while the next keyframe is still `span` old: what is left
            # always begins on a keyframe and covers at least `span`
            while True:
                nxt = next((i for i in range(1, len(ring)) if ring[i].keyframe), None)
                if nxt is None or frame.pts - ring[nxt].pts < self.span:
                    break
                for _ in range(nxt):
                    ring.popleft()
