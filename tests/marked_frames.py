"""Frames that carry their own index as big black/white blocks, for round-trip latency.

The index is written twice, as bits and as inverted bits, so a frame whose blocks do not read
back cleanly (codec damage, a placeholder) is rejected instead of misread."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import Optional

import av
import numpy as np
from aiortc import VideoStreamTrack

BITS = 16
BLOCK = 32
STEP = 38
TOP = 12


def mark(index: int, width: int = 640, height: int = 480) -> np.ndarray:
    img = np.full((height, width, 3), 96, np.uint8)
    for bit in range(BITS):
        on = (index >> bit) & 1
        x = 8 + bit * STEP
        img[TOP:TOP + BLOCK, x:x + BLOCK] = 255 if on else 0
        img[TOP + STEP:TOP + STEP + BLOCK, x:x + BLOCK] = 0 if on else 255
    return img


def read_mark(img: np.ndarray) -> Optional[int]:
    value = 0
    for bit in range(BITS):
        x = 8 + bit * STEP + BLOCK // 4
        a = img[TOP + BLOCK // 4:TOP + 3 * BLOCK // 4, x:x + BLOCK // 2].mean()
        b = img[TOP + STEP + BLOCK // 4:TOP + STEP + 3 * BLOCK // 4, x:x + BLOCK // 2].mean()
        if abs(a - b) < 100:
            return None  # not a marked frame (or too damaged to trust)
        value |= (a > b) << bit
    return value


class MarkedCamera(VideoStreamTrack):
    """A fake camera at `fps` whose frames carry their index; `sent[i]` is when frame i left."""

    def __init__(self, fps: int = 30) -> None:
        super().__init__()
        self.fps = fps
        self.sent: dict[int, float] = {}
        self._n = 0
        self._t0: Optional[float] = None

    async def recv(self) -> av.VideoFrame:
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._n / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(mark(self._n % (1 << BITS)), format="bgr24")
        frame.pts = self._n * 90000 // self.fps
        frame.time_base = Fraction(1, 90000)
        self.sent[self._n % (1 << BITS)] = time.monotonic()
        self._n += 1
        return frame
