"""Shared video encoders: each output tick is encoded once per codec and cut into RTP payloads
once, and every viewer of the pipeline is sent the same payloads (each viewer's send loop only
adds its RTP header and SRTP: `compat.aiortc.send_prepacked`, `compat/rtp_send.py`).

- VP8 (libvpx, realtime) and H.264 (libx264, constrained baseline, zerolatency, no B-frames),
  constant bitrate `VIDEO_BITRATE`, a keyframe every `KEYFRAME_INTERVAL` seconds.
- Keyframes on request (a new viewer, a viewer that lost frames, enough viewers' PLI/FIR: see
  `EncoderPool.request_keyframe`) are rate limited: a request is remembered and honoured at
  most every `MIN_FORCED_GAP_S` (`JOIN_GAP_S` for a joining viewer).
- One bitrate for every viewer of a source: receiver estimates (REMB) are not applied.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

from compat.aiortc import packetize

MIN_FORCED_GAP_S = 0.3
JOIN_GAP_S = 0.1  # viewers joining at once: the first frame matters more than a keyframe's bytes
CODECS = ("vp8", "h264")


@dataclass(frozen=True)
class EncodeSettings:
    bitrate: int = 1_000_000
    keyframe_interval_s: float = 2.0


@dataclass(frozen=True)
class EncodedFrame:
    codec: str
    data: bytes
    pts: int  # 90 kHz
    keyframe: bool
    payloads: tuple[bytes, ...] = ()  # `data` cut into RTP payloads once, for every viewer


class SharedEncoder:
    def __init__(self, codec: str, width: int, height: int, fps: int, bitrate: int, keyframe_interval_s: float):
        if codec not in CODECS:
            raise ValueError(f"unsupported codec {codec!r}")
        self.codec = codec
        self.fps = fps
        self.ctx = _context(codec, width, height, fps, bitrate, max(1, round(keyframe_interval_s * fps)))
        self._lock = threading.Lock()
        self._pending_key = True  # start with a keyframe
        self._pending_gap = MIN_FORCED_GAP_S  # JOIN_GAP_S while a joining viewer waits
        self._asked = 0  # requests so far: a periodic keyframe serves those made before it
        self._last_forced = 0.0
        # stats
        self.frames = 0
        self.keyframes = 0
        self.forced_keyframes = 0
        self.keyframe_requests = 0
        self.deferred_requests = 0  # viewers' PLIs left to the periodic keyframe (see EncoderPool)
        self.bytes = 0
        self.encode_ms = 0.0  # moving mean

    def request_keyframe(self, join: bool = False) -> None:
        """A keyframe as soon as the rate limit allows: `MIN_FORCED_GAP_S` after the last forced
        one, `JOIN_GAP_S` for a joining viewer."""
        with self._lock:
            self.keyframe_requests += 1
            self._asked += 1
            self._pending_key = True
            if join:
                self._pending_gap = JOIN_GAP_S

    def encode(self, i420: np.ndarray, tick: int, pts: int, picture_id: int = 0) -> EncodedFrame:
        """Encode one tick and cut it into RTP payloads (blocking; called from the pipeline's clock
        thread). `picture_id`: VP8's, 15 bits (the pool's count of frames sent)."""
        t0 = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = tick
        frame.time_base = Fraction(1, self.fps)
        with self._lock:
            asked = self._asked
            force = self._pending_key and t0 - self._last_forced >= self._pending_gap
            if force:
                self._pending_key = False
                self._pending_gap = MIN_FORCED_GAP_S
                self._last_forced = t0
        frame.pict_type = PictureType.I if force else PictureType.NONE
        packets = self.ctx.encode(frame)
        data = b"".join(bytes(p) for p in packets)
        keyframe = any(p.is_keyframe for p in packets)
        if keyframe and not force:
            with self._lock:
                if self._asked == asked:  # the periodic keyframe came first: no second one
                    self._pending_key, self._pending_gap = False, MIN_FORCED_GAP_S
        self.frames += 1
        self.keyframes += keyframe
        self.forced_keyframes += force
        self.bytes += len(data)
        ms = (time.perf_counter() - t0) * 1000
        self.encode_ms = ms if self.frames == 1 else 0.95 * self.encode_ms + 0.05 * ms
        payloads = packetize(self.codec, data, picture_id) if data else ()
        return EncodedFrame(self.codec, data, pts, keyframe, payloads)

    def stats(self) -> dict:
        return {"codec": self.codec, "frames": self.frames, "keyframes": self.keyframes,
                "forced_keyframes": self.forced_keyframes, "keyframe_requests": self.keyframe_requests,
                "deferred_keyframe_requests": self.deferred_requests,
                "bytes": self.bytes, "mean_encode_ms": round(self.encode_ms, 2)}


def _context(codec: str, width: int, height: int, fps: int, bitrate: int, gop: int) -> av.CodecContext:
    ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = gop
    ctx.thread_count = 1  # encoded once for everyone: one core is plenty, the other serves viewers
    if codec == "vp8":
        ctx.qmin, ctx.qmax = 2, 56
        ctx.options = {
            "deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "error-resilient": "1",
            "bufsize": str(bitrate), "minrate": str(bitrate), "maxrate": str(bitrate),  # CBR
            "static-thresh": "1", "partitions": "0", "undershoot-pct": "100", "overshoot-pct": "15",
        }
    else:
        ctx.profile = "Baseline"  # constrained baseline: no B-frames, what browsers negotiate
        ctx.max_b_frames = 0
        ctx.options = {"preset": "veryfast", "tune": "zerolatency", "level": "31",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1"}
    return ctx
