"""Everything FFmpeg can open, decoded with PyAV: files (loop at their end, paced to their frame
rate), network streams such as RTSP (TCP, open and read timeouts) and V4L2 cameras."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import av
import numpy as np

from core.redact import redact
from sources.base import SourceError


class AvSource:
    def __init__(self, target: str, label: str, *, kind: str, paced: bool, loop_at_end: bool,
                 fps: Optional[float] = None, format: Optional[str] = None,
                 options: Optional[dict] = None, timeout=None) -> None:
        self.target, self.label, self.kind = target, label, kind
        self.paced, self.loop_at_end = paced, loop_at_end
        self.fps = fps or 0.0
        self._fps_override = fps
        self._format, self._options, self._timeout = format, options or {}, timeout
        self._container = None
        self._stream = None
        self._frames = None

    def open(self) -> None:
        try:
            self._container = av.open(self.target, mode="r", format=self._format, options=self._options,
                                      timeout=self._timeout)
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            self.close()
            raise SourceError(f"cannot open {self.label}: {_reason(exc)}") from None
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = self._fps_override or (float(rate) if rate else 25.0)
        self._frames = self._container.decode(self._stream)

    def read(self) -> Optional[np.ndarray]:
        if self._frames is None:
            raise SourceError(f"{self.label} is not open")
        for attempt in range(2):
            try:
                return next(self._frames).to_ndarray(format="bgr24")
            except StopIteration:
                if not self.loop_at_end:
                    raise SourceError(f"{self.label}: the stream ended") from None
                if attempt:  # rewound and still nothing: no decodable frame at all
                    raise SourceError(f"no decodable video in {self.label}") from None
                self._container.seek(0)
                self._frames = self._container.decode(self._stream)
            except (av.FFmpegError, OSError) as exc:
                raise SourceError(f"cannot read {self.label}: {_reason(exc)}") from None
        return None

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = self._stream = self._frames = None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return redact(str(reason))


def file_source(path: Path, fps: Optional[float] = None) -> AvSource:
    return AvSource(str(path), path.name, kind="file", paced=True, loop_at_end=True, fps=fps)


def network_source(url: str, open_timeout: float, read_timeout: float, fps: Optional[float] = None) -> AvSource:
    options = {"rtsp_transport": "tcp"} if url.lower().startswith(("rtsp://", "rtsps://")) else {}
    return AvSource(url, redact(url), kind="rtsp", paced=False, loop_at_end=False, fps=fps,
                    options=options, timeout=(open_timeout, read_timeout))


class DeviceSource(AvSource):
    """`device:N`: the V4L2 camera /dev/videoN."""

    def __init__(self, index: int, fps: Optional[float] = None) -> None:
        self.path = f"/dev/video{index}"
        super().__init__(self.path, f"camera device:{index}", kind="device", paced=False, loop_at_end=False,
                         fps=fps, format="v4l2")

    def open(self) -> None:
        if not os.path.exists(self.path):
            raise SourceError(f"no camera at {self.path} (device:{self.path[10:]})")
        super().open()


def probe(path: Path) -> None:
    """Raise SourceError unless the file holds at least one decodable video frame."""
    src = file_source(path)
    try:
        src.open()
        src.read()  # at least one frame decodes (at the end it rewinds once, then gives up)
    except (av.FFmpegError, OSError) as exc:  # e.g. the rewind itself fails
        raise SourceError(f"cannot decode {path.name}: {_reason(exc)}") from None
    finally:
        src.close()
