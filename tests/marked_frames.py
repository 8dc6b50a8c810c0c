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
    """The index `mark` wrote, read from a BGR image or a luma plane; None if any bit is unclear.
    One slice per row of blocks (the middle half of each block), not one per block: load
    clients call this for every frame they decode."""
    left, width = 8 + BLOCK // 4, BITS * STEP
    rows = slice(TOP + BLOCK // 4, TOP + 3 * BLOCK // 4)
    rows_inverted = slice(TOP + STEP + BLOCK // 4, TOP + STEP + 3 * BLOCK // 4)

    def means(band: np.ndarray) -> np.ndarray:
        band = band[:, left:left + width].reshape(band.shape[0], BITS, STEP, -1)[:, :, :BLOCK // 2]
        return band.mean(axis=(0, 2, 3))

    if img.shape[0] < rows_inverted.stop or img.shape[1] < left + width:
        return None  # too small to carry the marks
    a, b = means(img[rows]), means(img[rows_inverted])
    if (np.abs(a - b) < 100).any():
        return None  # not a marked frame (or too damaged to trust)
    return int(((a > b) << np.arange(BITS)).sum())


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
