"""Everything FFmpeg can open, decoded with PyAV: files (loop at their end, paced to their frame
rate), network streams such as RTSP (TCP, open and read timeouts) and V4L2 cameras.

Files, a client's `video_path` and configured ones alike, are read as plain containers only:
FFmpeg gets an already opened regular file (never a FIFO or a device, so opening cannot block),
a short list of demuxers that never open another file or URL (no HLS/DASH playlists, no concat
lists, no image sequences) and the `file` protocol only. Network URLs and cameras are configured
by the operator and keep every format."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO, Optional

import av
import numpy as np

from core.redact import redact
from sources.base import SourceError


#: the demuxers a file is read with: plain containers and raw streams that never open another
#: file or URL (FFmpeg matches any one name of a demuxer: "mov" is "mov,mp4,m4a,3gp,3g2,mj2")
FILE_FORMATS = ("mov", "matroska", "avi", "mpegts", "mpeg", "mpegvideo", "flv", "ogg", "asf", "ivf", "nut",
                "h264", "hevc", "m4v", "obu", "mjpeg", "gif", "yuv4mpegpipe")
FILE_CONTAINER_OPTIONS = {"format_whitelist": ",".join(FILE_FORMATS), "protocol_whitelist": "file"}
#: the longest a probe of a client's file may read for
PROBE_TIMEOUT_S = 10.0


class AvSource:
    def __init__(self, target: str, label: str, *, kind: str, paced: bool, loop_at_end: bool,
                 fps: Optional[float] = None, format: Optional[str] = None,
                 options: Optional[dict] = None, timeout=None, container_options: Optional[dict] = None,
                 regular_file: bool = False, read_deadline_s: Optional[float] = None) -> None:
        self.target, self.label, self.kind = target, label, kind
        self.paced, self.loop_at_end = paced, loop_at_end
        self.fps = fps or 0.0
        self._fps_override = fps
        self._format, self._options, self._timeout = format, options or {}, timeout
        self._container_options = container_options or {}
        #: open `target` here, and only if it is a regular file; reads stop after `read_deadline_s`
        self._regular_file, self._read_deadline_s = regular_file, read_deadline_s
        self._file: Optional[BinaryIO] = None
        self._container = None
        self._stream = None
        self._frames = None

    def open(self) -> None:
        try:
            target = self.target
            if self._regular_file:
                deadline = None if self._read_deadline_s is None else time.monotonic() + self._read_deadline_s
                target = self._file = open_regular_file(self.target, deadline)
            self._container = av.open(target, mode="r", format=self._format, options=self._options,
                                      container_options=self._container_options, timeout=self._timeout)
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            self.close()
            raise SourceError(f"cannot open {self.label}: {self._open_reason(exc)}") from None
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
        try:
            if self._container is not None:
                self._container.close()
        finally:
            self._container = self._stream = self._frames = None
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open_reason(self, exc: BaseException) -> str:
        if isinstance(exc, NotARegularFile):
            return exc.strerror
        if self._container_options.get("format_whitelist") and getattr(exc, "errno", None) == errno.EINVAL:
            # what FFmpeg says when the detected format is not on the list
            return "not a video file in a supported container (playlists and file lists are not read)"
        return _reason(exc)


class NotARegularFile(OSError):
    def __init__(self) -> None:
        super().__init__(errno.EINVAL, "not a regular file (a FIFO, a device or a folder is never read)")


class _Deadline:
    """A file whose reads fail once `deadline` (time.monotonic) has passed."""

    def __init__(self, file: BinaryIO, deadline: float) -> None:
        self._file, self._deadline = file, deadline
        self.name = getattr(file, "name", "")

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise TimeoutError(errno.ETIMEDOUT, "reading took too long")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def open_regular_file(path: str, deadline: Optional[float] = None) -> BinaryIO:
    """`path` opened for reading if it is a regular file; OSError if it is anything else (a FIFO,
    a device, a directory), checked before opening (opening a device can act) and again after
    (the file opened is the file checked). Never blocks: FIFOs are opened non-blocking."""
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotARegularFile()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise NotARegularFile()
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return file if deadline is None else _Deadline(file, deadline)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return redact(str(reason))


def file_source(path: Path, fps: Optional[float] = None, read_deadline_s: Optional[float] = None) -> AvSource:
    """A video file, read as a plain container (see the module's doc), looping at its end."""
    return AvSource(str(path), path.name, kind="file", paced=True, loop_at_end=True, fps=fps,
                    container_options=FILE_CONTAINER_OPTIONS, regular_file=True, read_deadline_s=read_deadline_s)


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


def probe(path: Path, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise SourceError unless the file holds at least one decodable video frame. Runs in a
    worker thread; reads stop after `timeout_s` (a regular file never blocks, so that bounds it)."""
    src = file_source(path, read_deadline_s=timeout_s)
    try:
        src.open()
        src.read()  # at least one frame decodes (at the end it rewinds once, then gives up)
    except (av.FFmpegError, OSError) as exc:  # e.g. the rewind itself fails
        raise SourceError(f"cannot decode {path.name}: {_reason(exc)}") from None
    finally:
        src.close()
