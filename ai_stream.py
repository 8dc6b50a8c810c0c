"""`AIProcessedStream`: the per-viewer video track.

Two ways to feed aiortc (`ENCODE_MODE`):
- `shared` (default): `recv()` returns the pipeline's shared encoded frame for this viewer's
  codec (`EncodedFrame`, already cut into RTP payloads, pts at 90 kHz), whose payloads the
  sender's lean loop sends as they are (`compat.aiortc.send_prepacked`). Frames are taken in
  order from the pipeline's short ring; a viewer starts at a keyframe (one at most `JOIN_BEHIND`
  ticks old in the ring, else the next, asked for at once), and after losing packets (it fell
  further behind than the ring) it skips to the newest and asks for a keyframe.
- `per_viewer`: `recv()` returns an `av.VideoFrame` and aiortc encodes it for this viewer. The
  shared, read-only I420 image is wrapped in a new frame per viewer (aiortc's encoder writes
  `pts` and `pict_type` on the frame object it is given).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Awaitable, Callable, Optional, Union

import av
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from model import VIDEO_CLOCK_RATE, AIProcessor
from pipeline.encoders import EncodedFrame

TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
JOIN_BEHIND = 2  # a joining viewer may start from a keyframe this many ticks old
_viewer_ids = itertools.count(1)  # never reused, unlike id()


class AIProcessedStream(VideoStreamTrack):
    kind = "video"

    def __init__(self, pipeline: AIProcessor, on_end: Optional[Callable[[AIProcessor], Awaitable[None]]] = None):
        super().__init__()
        self.pipeline = pipeline
        self._on_end = on_end
        self.codec: Optional[str] = None  # set by use_shared_encoder
        self.frames_sent = 0
        self.last_frame_id = 0
        self.keyframe_requests = 0
        self.plis = 0  # PLI/FIR from the viewer
        self.lost = 0  # times this viewer fell behind the ring and had to wait for a keyframe
        self._seq = -1
        self._need_keyframe = True
        self.viewer_id = next(_viewer_ids)

    def use_shared_encoder(self, codec: str) -> None:
        """Send the pipeline's shared `codec` packets instead of frames (call before it starts)."""
        self.codec = codec
        self.pipeline.use_codec(codec, viewer=self.viewer_id)

    def request_keyframe(self, join: bool = False) -> None:
        """This viewer starts (`join`) or fell behind the ring: it needs a keyframe (rate-limited)."""
        self.keyframe_requests += 1
        if self.codec is not None:
            self.pipeline.request_keyframe(self.codec, join=join)

    def picture_lost(self) -> None:
        """The viewer's decoder broke (PLI/FIR: NACK could not repair it). A keyframe is forced
        only if enough viewers wait, or it waited too long (`EncoderPool.request_keyframe`); else
        the periodic one serves it. Deltas keep going: a decoder that is fine after all (a PLI
        sent before its keyframe arrived) must not freeze, and a broken one drops them."""
        self.keyframe_requests += 1
        self.plis += 1
        if self.codec is not None:
            self.pipeline.request_keyframe(self.codec, broken=self.viewer_id)

    async def recv(self) -> Union[av.VideoFrame, EncodedFrame]:
        if self.readyState != "live":
            raise MediaStreamError
        if self.codec is None:
            out = await self.pipeline.next_frame()
            frame = av.VideoFrame.from_ndarray(out.i420, format="yuv420p")
            frame.pts, frame.time_base = out.pts, TIME_BASE
            return self._sent(out, frame)
        if self._seq < 0:
            self._join()
        while True:
            if self._seq < 0:  # the pipeline had published nothing yet
                await self.pipeline.wait_tick()
                self._join()
                continue
            out, lost = self.pipeline.after(self._seq)
            if out is None:
                await self.pipeline.wait_tick()
                continue
            if lost:
                self.lost += 1
                self._need_keyframe = True
                self.request_keyframe()
            self._seq = out.seq
            encoded = out.encoded.get(self.codec)
            if encoded is None or (self._need_keyframe and not encoded.keyframe):
                continue  # the encoder starts next tick, or a keyframe is on its way
            self._need_keyframe = False
            return self._sent(out, encoded)  # its payloads go out as they are (send_prepacked)

    def _join(self) -> None:
        """Where a new viewer starts: at a keyframe at most JOIN_BEHIND ticks old if the ring has
        one (the frames after it follow at once, so it is live within a few packets and nobody
        else pays for a keyframe), else at the newest tick, asking for a keyframe now rather
        than a tick later (it comes with the next tick)."""
        newest = self.pipeline.newest()
        if newest is None:
            return
        key = self.pipeline.recent_keyframe(self.codec, JOIN_BEHIND)
        if key is not None:
            self._seq = key.seq - 1
            return
        self._seq = newest.seq - 1
        self.request_keyframe(join=True)

    def _sent(self, out, media):
        self.frames_sent += 1
        self.pipeline.sent_counter.inc()
        self.last_frame_id = out.frame_id
        return media

    async def release(self) -> None:
        """Stop the track and give the pipeline back (idempotent)."""
        self.stop()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            if self.codec is not None:
                self.pipeline.drop_codec(self.codec, viewer=self.viewer_id)
            await on_end(self.pipeline)
