"""Fragmented MP4 files of pre-encoded H.264 (PyAV), written so that a cut file still plays.

- `frag_keyframe+empty_moov+default_base_moof` with a fragment every `FRAGMENT_S`: the `moov` at
  the head describes no samples, each fragment (`moof` + `mdat`) carries its own, so a file cut
  by a crash plays up to its last complete fragment, and a browser plays it while it grows.
- The shared encoder writes Annex B with SPS/PPS in every keyframe and no extradata. The file is
  opened on the first keyframe: PyAV's `extract_extradata` takes its SPS/PPS before the header is
  written, and FFmpeg's mp4 muxer turns them into the `avcC` box (browsers refuse an `avc1`
  track without it) and each sample into length-prefixed NAL units.
- Time base 1/90000, pts = dts = the pipeline clock's pts minus the first one: a file plays at
  real speed, gaps included (a stalled source repeats frames; skipped ticks leave gaps).
- Bytes go through an unbuffered `io.FileIO`: what the muxer hands over is in the kernel at once
  (a SIGKILL loses nothing written), every write is counted, and a write error (ENOSPC, EFBIG)
  comes back as the `OSError` it is.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import av

from pipeline.frames import VIDEO_CLOCK_RATE

FRAGMENT_S = 1.0
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


class _CountingFile(io.FileIO):
    def __init__(self, path: Path, on_bytes: Callable[[int], None]) -> None:
        super().__init__(path, "w")
        self._on_bytes = on_bytes

    def write(self, data) -> int:  # type: ignore[override]
        written = super().write(data)
        if written:
            self._on_bytes(written)
        return written


class Mp4File:
    """One fragmented MP4 being written. Not thread-safe: one writer thread owns it."""

    def __init__(self, path: Path, fps: int, width: int, height: int,
                 on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self.path = path
        self.fps = fps
        self.bytes = 0
        self.frames = 0
        self.first_pts: Optional[int] = None
        self.last_pts: Optional[int] = None

        def count(n: int) -> None:
            self.bytes += n
            on_bytes(n)

        self._file = _CountingFile(path, count)
        try:
            self._container = av.open(self._file, "w", format="mp4", options={
                "movflags": MOVFLAGS, "frag_duration": str(int(FRAGMENT_S * 1_000_000))})
            self._stream = self._container.add_mux_stream("h264", rate=fps, width=width, height=height)
            self._stream.time_base = TIME_BASE
        except BaseException:
            self._file.close()
            raise

    @property
    def duration_s(self) -> float:
        """Length of what has been handed to the muxer (the last frame lasts one tick)."""
        if self.first_pts is None:
            return 0.0
        return (self.last_pts - self.first_pts + VIDEO_CLOCK_RATE // self.fps) / VIDEO_CLOCK_RATE

    def write(self, data: bytes, pts: int, keyframe: bool) -> None:
        """Add one encoded frame (Annex B; the first must be a keyframe). Raises OSError when
        the bytes cannot be written."""
        if self.first_pts is None:
            if not keyframe:
                raise ValueError("a recording starts on a keyframe")
            self.first_pts = pts
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts - self.first_pts
        packet.duration = VIDEO_CLOCK_RATE // self.fps
        packet.is_keyframe = keyframe
        self._container.mux(packet)
        self.last_pts = pts
        self.frames += 1

    def close(self) -> Optional[str]:
        """Write the last fragment and close. Returns why that failed (the file stays as it is), or None."""
        error = None
        try:
            self._container.close()
        except Exception as exc:
            error = describe(exc)
        finally:
            try:
                self._file.close()
            except OSError as exc:
                error = error or describe(exc)
        return error


def describe(exc: BaseException) -> str:
    """A write error as a sentence: 'No space left on device', 'File too large', ..."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or os.strerror(exc.errno)
    # av.FFmpegError's text names the file (a server path): its strerror alone, never the path
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else "the video could not be written (see the log)"


def probe(path: Path) -> tuple[float, int]:
    """(duration in seconds, frames) of a recording as far as it plays (a cut file: up to its last
    complete fragment). Demuxes, never decodes. Raises av.FFmpegError or OSError if it won't open."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = last = None
        frames = 0
        step = 0
        for packet in container.demux(stream):
            if packet.pts is None or not packet.size:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            last = packet.pts if last is None else max(last, packet.pts)
            step = packet.duration or step
            frames += 1
        if first is None:
            return 0.0, 0
        return float((last - first + step) * stream.time_base), frames
