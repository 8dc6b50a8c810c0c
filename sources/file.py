"""Video files, decoded with PyAV (FFmpeg). Files loop at their end."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np

from sources.base import SourceError


class FileSource:
    kind = "file"
    paced = True

    def __init__(self, path: Path, fps: Optional[float] = None) -> None:
        self.path = path
        self.fps = fps or 0.0
        self._fps_override = fps
        self._container = None
        self._frames = None

    def open(self) -> None:
        try:
            self._container = av.open(str(self.path), mode="r")
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            self.close()
            raise SourceError(f"cannot open video file {self.path.name}: {_reason(exc)}") from None
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = self._fps_override or (float(rate) if rate else 25.0)
        self._stream = stream
        self._frames = self._container.decode(stream)

    def read(self) -> Optional[np.ndarray]:
        if self._frames is None:
            raise SourceError("file source is not open")
        for attempt in range(2):
            try:
                frame = next(self._frames)
                return frame.to_ndarray(format="bgr24")
            except StopIteration:
                if attempt:  # rewound and still nothing: the file has no decodable frame
                    raise SourceError(f"no decodable video in {self.path.name}") from None
                self._rewind()
            except av.FFmpegError as exc:
                raise SourceError(f"cannot decode {self.path.name}: {_reason(exc)}") from None
        return None

    def _rewind(self) -> None:
        self._container.seek(0)
        self._frames = self._container.decode(self._stream)

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None
                self._frames = None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def probe(path: Path) -> None:
    """Raise SourceError unless the file holds at least one decodable video frame."""
    src = FileSource(path)
    try:
        src.open()
        try:
            frame = next(src._frames)
        except StopIteration:
            raise SourceError(f"no decodable video in {path.name}") from None
        except av.FFmpegError as exc:
            raise SourceError(f"cannot decode {path.name}: {_reason(exc)}") from None
        frame.to_ndarray(format="bgr24")
    finally:
        src.close()
