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
    record: bool = False  # recorded whenever its pipeline runs (SOURCES `record`; implies always_on)
    #: a file's name as the API shows it: relative to MEDIA_DIR, else its last part (`display`)
    label: Optional[str] = None

    @property
    def metric_label(self) -> str:
        """The `source` label in /metrics: a viewer's own camera is `camera`, an offer's file is
        `file` (no session id or path becomes a label)."""
        if self.kind == "camera":
            return "camera"
        return "file" if self.name.startswith("file:") else self.name

    @property
    def display(self) -> str:
        """What the API shows: never a full server path, never credentials."""
        if self.kind == "file":
            return self.label or self.path.name
        if self.kind == "rtsp":
            return redact(self.url)
        if self.kind == "device":
            return f"device:{self.device}"
        return self.kind


def parse_source(name: str, url: str, media_dir: Path, fps: Optional[float] = None,
                 model: Optional[str] = None, always_on: bool = False, record: bool = False) -> SourceSpec:
    """A configured source (trusted operator input). Raises ValueError for an unknown scheme."""
    common = dict(name=name, fps=fps, model=model, always_on=always_on or record, record=record)
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
    resolved = (path if path.is_absolute() else media_dir / path).resolve()
    return SourceSpec(kind="file", path=resolved, label=_file_label(path, resolved, media_dir), **common)


def _file_label(path: Path, resolved: Path, media_dir: Path) -> str:
    """A configured file's name relative to MEDIA_DIR (as written, or as resolved), else its last part."""
    for candidate, root in ((path, media_dir), (path, media_dir.resolve()), (resolved, media_dir.resolve())):
        full = candidate if candidate.is_absolute() else root / candidate
        try:
            relative = full.relative_to(root).as_posix()
        except ValueError:
            continue
        if relative not in ("", ".") and ".." not in relative.split("/"):
            return relative
    return resolved.name or path.name


def display_name(url: Optional[str], media_dir: Path) -> Optional[str]:
    """How a configured source (`VIDEO_FILE_PATH`, a SOURCES url) is shown, whether or not it exists:
    a file relative to MEDIA_DIR, a URL without credentials, `device:N`, `synthetic`."""
    if not url:
        return None
    try:
        return parse_source("display", url, media_dir).display
    except ValueError:  # an unsupported scheme: still a URL
        return redact(url)


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
