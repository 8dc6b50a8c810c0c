"""A cheap hostile camera for tests: pre-encoded frames replayed as fast as asked, which aiortc's
sender only packetises (no encoding on the client), and a guard that stops a test before a
server without limits takes the box's memory."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

TIME_BASE = Fraction(1, 90000)


def encoded_keyframe(codec: str, width: int, height: int) -> bytes:
    """One keyframe of a flat grey picture (small to send, full size to decode)."""
    ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    if codec == "h264":
        ctx.profile = "Baseline"
        ctx.options = {"x264-params": "repeat-headers=1"}
    frame = av.VideoFrame.from_ndarray(np.full((height * 3 // 2, width), 128, np.uint8), format="yuv420p")
    frame.pts = 0
    packets = ctx.encode(frame) + ctx.encode(None)
    return bytes(packets[0])


class FloodTrack(MediaStreamTrack):
    """Sends the same encoded keyframe `fps` times a second."""

    kind = "video"

    def __init__(self, data: bytes, fps: float) -> None:
        super().__init__()
        self.data, self.fps = data, fps
        self.sent = 0
        self._start = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        packet = av.Packet(self.data)
        packet.pts, packet.time_base = int(self.sent * 90000 / self.fps), TIME_BASE
        self.sent += 1
        return packet


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryGuard:
    """Calls `stop()` (e.g. closing the flooding client) if this process grows past `limit`, and
    ends the process (the in-process server with it) past 1.5 × `limit`: the server goes, never
    the box."""

    def __init__(self, stop, limit: int = 3 * 2**30) -> None:
        self.limit, self.stop, self.tripped = limit, stop, False
        self.peak = rss_bytes()
        self._done = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._watch, name="test-memory-guard", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, rss_bytes())
            if self.peak > self.limit and not self.tripped:
                self.tripped = True
                asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
            if self.peak > 1.5 * self.limit:
                os.write(2, f"memory guard: {self.peak >> 20} MB, ending the test process\n".encode())
                os._exit(3)

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
