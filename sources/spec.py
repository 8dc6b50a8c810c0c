"""A source by name: what it is (`SourceSpec`), how it is configured (`parse_source`) and how
to open it (`open_source`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.redact import redact
from sources.base import FrameSource
from sources.synthetic import SyntheticSource

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "srt", "udp", "tcp")
_DEVICE = re.compile(r"^device:(\d{1,3})$")


@dataclass(frozen=True)
class SourceSpec:
    #: the name clients use (`default`, a SOURCES name, `file:<path>` for an offer's video_path,
    #: `camera-<session>` for a viewer's own camera)
    name: str
    kind: str  # synthetic | file | rtsp | device | camera
    path: Optional[Path] = None
    url: Optional[str] = None  # network URL, may hold credentials: show only `display`
    device: Optional[int] = None
    fps: Optional[float] = None
    model: Optional[str] = None
    always_on: bool = False

    @property
    def display(self) -> str:
        """What the API shows: never a full server path, never credentials."""
        if self.kind == "file":
            return self.path.name
        if self.kind == "rtsp":
            return redact(self.url)
        if self.kind == "device":
            return f"device:{self.device}"
        return self.kind


def parse_source(name: str, url: str, media_dir: Path, fps: Optional[float] = None,
                 model: Optional[str] = None, always_on: bool = False) -> SourceSpec:
    """A configured source (trusted operator input). Raises ValueError for an unknown scheme."""
    common = dict(name=name, fps=fps, model=model, always_on=always_on)
    if url == "synthetic":
        return SourceSpec(kind="synthetic", **common)
    match = _DEVICE.match(url)
    if match:
        return SourceSpec(kind="device", device=int(match.group(1)), **common)
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme in NETWORK_SCHEMES:
        return SourceSpec(kind="rtsp", url=url, **common)
    if scheme is not None:
        raise ValueError(f"source {name!r}: unsupported URL scheme {scheme!r}")
    path = Path(url)
    return SourceSpec(kind="file", path=(path if path.is_absolute() else media_dir / path).resolve(), **common)


def default_source(video_file_path: Optional[str], media_dir: Path) -> SourceSpec:
    """The source named `default`: VIDEO_FILE_PATH if it names an existing file, else synthetic."""
    if video_file_path and video_file_path != "synthetic":
        spec = parse_source("default", video_file_path, media_dir)
        if spec.kind != "file" or spec.path.is_file():
            return spec
    return SourceSpec(name="default", kind="synthetic")


def open_source(spec: SourceSpec, width: int, height: int, fps: float, open_timeout: float = 5.0,
                read_timeout: float = 5.0) -> FrameSource:
    from sources.av_source import DeviceSource, file_source, network_source

    if spec.kind == "file":
        return file_source(spec.path, spec.fps)
    if spec.kind == "rtsp":
        return network_source(spec.url, open_timeout, read_timeout, spec.fps)
    if spec.kind == "device":
        return DeviceSource(spec.device, spec.fps)
    return SyntheticSource(width, height, spec.fps or fps)
