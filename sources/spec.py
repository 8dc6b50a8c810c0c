"""A source by name: what it is (`SourceSpec`) and how to open it (`open_source`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sources.base import FrameSource
from sources.file import FileSource
from sources.synthetic import SyntheticSource


@dataclass(frozen=True)
class SourceSpec:
    #: the name clients use (`default`, or `file:<relative path>` for an offer's video_path)
    name: str
    kind: str  # "synthetic" | "file"
    path: Optional[Path] = None
    fps: Optional[float] = None

    @property
    def display(self) -> str:
        """What the API shows: never a full server path."""
        return self.path.name if self.path else self.kind


def default_source(video_file_path: Optional[str], media_dir: Path) -> SourceSpec:
    """The source named `default`: VIDEO_FILE_PATH if it names an existing file, else synthetic."""
    if video_file_path and video_file_path != "synthetic":
        path = Path(video_file_path)
        if not path.is_absolute():
            path = media_dir / path
        if path.is_file():
            return SourceSpec(name="default", kind="file", path=path.resolve())
    return SourceSpec(name="default", kind="synthetic")


def open_source(spec: SourceSpec, width: int, height: int, fps: float) -> FrameSource:
    if spec.kind == "file":
        return FileSource(spec.path, spec.fps)
    return SyntheticSource(width, height, spec.fps or fps)
