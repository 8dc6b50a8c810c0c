"""What a client may make the server decode (camera mode).

aiortc hands every reassembled frame to its decoder thread through an unbounded queue; a client
that sends big frames faster than they decode grows that queue (and the decoded frames) without
limit, and closing the connection then waits on the event loop while the backlog is decoded.
`DecodeGate` takes that queue's place (through `compat.aiortc.install_decode_gate`) and admits a
frame only if
- its size, read from the encoded frame (VP8 keyframe header, H.264 SPS), is within
  CAMERA_MAX_WIDTH × CAMERA_MAX_HEIGHT;
- it fits CAMERA_MAX_FPS (a token bucket holding one second of frames);
- the decoder's backlog is below `BACKLOG_FRAMES`.
Dropping an inter frame corrupts every frame after it, so after any drop the gate drops until
the next acceptable keyframe and asks the client for one (PLI, at most every `PLI_GAP_S`).
Frames refused for size or rate are strikes: a session with strikes in `STRIKE_SECONDS`
consecutive seconds is closed by the session reaper (reason `camera-limits`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

from compat.aiortc import install_decode_gate, picture_requester
from webrtc.bitstream import h264_access_unit, vp8_keyframe_size

BACKLOG_FRAMES = 4  # frames waiting for the decoder thread; the decoder keeps up with far less
PLI_GAP_S = 0.5
STRIKE_SECONDS = 3


class DecodeGate:
    def __init__(self, max_width: int, max_height: int, max_fps: float,
                 request_keyframe: Callable[[], None] = lambda: None) -> None:
        self.max_width, self.max_height, self.max_fps = max_width, max_height, max_fps
        self.request_keyframe = request_keyframe
        self._queue: queue.Queue = queue.Queue()  # bounded by `put`, which never blocks the loop
        self._lock = threading.Lock()
        self._tokens = max_fps
        self._refilled = time.monotonic()
        self._need_keyframe = True  # decoding starts at a keyframe
        self._size: Optional[tuple[int, int]] = None  # H.264: from the last SPS seen
        self._last_pli = 0.0
        self._closed = False
        self.admitted = 0
        self.dropped: dict[str, int] = {}  # reason → frames
        self.strikes = 0  # frames refused for size or rate
        self.last_violation = ""

    # -- aiortc's side: `put` on the event loop, `get` on the decoder thread ----------
    def put(self, task) -> None:
        if task is None:  # aiortc stopping its decoder
            self.close()
            return
        codec, frame = task
        reason = self._refuse(codec.name.lower(), frame.data)
        if reason is None:
            self.admitted += 1
            self._queue.put(task)
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if reason != "awaiting_keyframe":
            self._need_keyframe = True
            now = time.monotonic()
            if now - self._last_pli >= PLI_GAP_S:
                self._last_pli = now
                self.request_keyframe()

    def get(self, *args, **kwargs):
        return self._queue.get(*args, **kwargs)

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Drop what waits and let the decoder thread end after the frame it is decoding."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)

    # -- the rules ----------------------------------------------------------------------
    def _refuse(self, codec: str, data: bytes) -> Optional[str]:
        if self._closed:
            return "closed"
        try:
            keyframe, size = self._inspect(codec, data)
        except ValueError:
            return "malformed"
        if size is not None and (size[0] > self.max_width or size[1] > self.max_height):
            self._strike(f"{size[0]}x{size[1]} is larger than {self.max_width}x{self.max_height}")
            return "too_large"
        if not self._take_token():
            self._strike(f"more than {self.max_fps:g} frames per second")
            return "too_fast"
        if self._need_keyframe and not keyframe:
            return "awaiting_keyframe"
        if self._queue.qsize() >= BACKLOG_FRAMES:
            return "backlog"
        self._need_keyframe = False
        return None

    def _inspect(self, codec: str, data: bytes) -> tuple[bool, Optional[tuple[int, int]]]:
        if codec == "vp8":
            size = vp8_keyframe_size(data)
            return size is not None, size
        if codec == "h264":
            idr, size = h264_access_unit(data)
            if size is not None:
                self._size = size
            return idr, self._size if idr else size
        raise ValueError(f"unsupported codec {codec}")

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.max_fps, self._tokens + (now - self._refilled) * self.max_fps)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _strike(self, why: str) -> None:
        self.strikes += 1
        self.last_violation = why

    def stats(self) -> dict:
        return {"admitted": self.admitted, "dropped": dict(self.dropped), "backlog": self.qsize(),
                "strikes": self.strikes}


class StrikeWatch:
    """Sampled once a second by the reaper: True once strikes grew in STRIKE_SECONDS samples in a row."""

    def __init__(self, gate: DecodeGate) -> None:
        self.gate = gate
        self._seen = 0
        self._run = 0

    def exceeded(self) -> bool:
        strikes = self.gate.strikes
        self._run = self._run + 1 if strikes > self._seen else 0
        self._seen = strikes
        return self._run >= STRIKE_SECONDS


def guard_receivers(pc, max_width: int, max_height: int, max_fps: float) -> list[DecodeGate]:
    """A gate in front of every video receiver of `pc` (call after the remote offer is applied)."""
    gates = []
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            receiver = transceiver.receiver
            gate = DecodeGate(max_width, max_height, max_fps, picture_requester(receiver))
            install_decode_gate(receiver, gate)
            gates.append(gate)
    return gates
