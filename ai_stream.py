"""`AIProcessedStream`: the per-viewer video track.

Each viewer awaits the shared pipeline's next tick and wraps the shared, read-only I420
image in its own `av.VideoFrame` (aiortc's encoder writes `pts` and `pict_type` on the
frame object it gets, so frame objects are never shared between viewers)."""

from __future__ import annotations

from fractions import Fraction
from typing import Awaitable, Callable, Optional

import av
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from model import VIDEO_CLOCK_RATE, AIProcessor

TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


class AIProcessedStream(VideoStreamTrack):
    kind = "video"

    def __init__(self, pipeline: AIProcessor, on_end: Optional[Callable[[AIProcessor], Awaitable[None]]] = None):
        super().__init__()
        self.pipeline = pipeline
        self._on_end = on_end
        self.frames_sent = 0
        self.last_frame_id = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        out = await self.pipeline.next_frame()
        frame = av.VideoFrame.from_ndarray(out.i420, format="yuv420p")
        frame.pts = out.pts
        frame.time_base = TIME_BASE
        self.frames_sent += 1
        self.last_frame_id = out.frame_id
        return frame

    async def release(self) -> None:
        """Stop the track and give the pipeline back (idempotent)."""
        self.stop()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            await on_end(self.pipeline)
