"""The media allowlist: a client-given path is only ever resolved inside MEDIA_DIR."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


class MediaPathError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def resolve_media_path(raw: str, media_dir: Path) -> Path:
    """Return the real path of `raw` inside `media_dir`, or raise MediaPathError (400/404)."""
    if not raw or not raw.strip():
        raise MediaPathError(400, "video_path must not be empty.")
    if "\x00" in raw:
        raise MediaPathError(400, "video_path must not contain a NUL character.")
    if _SCHEME.match(raw) or "://" in raw:
        raise MediaPathError(400, "video_path must be a file name inside the media folder, not a URL.")
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        raise MediaPathError(400, "video_path must be relative to the media folder, not absolute.")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise MediaPathError(400, "video_path must not contain '..'.")
    root = media_dir.resolve()
    path = (root / Path(*parts)).resolve()  # follows symlinks
    if not path.is_relative_to(root):
        raise MediaPathError(400, "video_path leads outside the media folder.")
    if not path.exists():
        raise MediaPathError(404, f"Video file {raw!r} was not found in the media folder.")
    if not path.is_file():
        raise MediaPathError(400, f"video_path {raw!r} is not a file.")
    return path
