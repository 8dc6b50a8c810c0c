"""The media allowlist: a client-given path is only ever resolved inside MEDIA_DIR, and only to
a regular file. Whatever the client sent comes back clipped (see `core.redact.clip`)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from core.redact import clip

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")

#: the longest video_path looked at (Linux allows 4095 bytes; no media file needs that many)
MAX_PATH_CHARS = 1024


class MediaPathError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def resolve_media_path(raw: str, media_dir: Path) -> Path:
    """Return the real path of `raw` inside `media_dir`, or raise MediaPathError (400/404)."""
    if not raw or not raw.strip():
        raise MediaPathError(400, "video_path must not be empty.")
    if len(raw) > MAX_PATH_CHARS:
        raise MediaPathError(400, f"video_path is too long ({len(raw)} characters; at most {MAX_PATH_CHARS}).")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, sent as a JSON \ud800 escape
        raise MediaPathError(400, "video_path must be valid Unicode text (it holds a lone surrogate).") from None
    if "\x00" in raw:
        raise MediaPathError(400, "video_path must not contain a NUL character.")
    if _SCHEME.match(raw) or "://" in raw:
        raise MediaPathError(400, "video_path must be a file name inside the media folder, not a URL.")
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        raise MediaPathError(400, "video_path must be relative to the media folder, not absolute.")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise MediaPathError(400, "video_path must not contain '..'.")
    shown = repr(clip(raw, 100))
    root = media_dir.resolve()
    try:
        path = (root / Path(*parts)).resolve()  # follows symlinks
        if not path.is_relative_to(root):
            raise MediaPathError(400, "video_path leads outside the media folder.")
        if not path.exists():
            raise MediaPathError(404, f"Video file {shown} was not found in the media folder.")
        if not path.is_file():  # a folder, FIFO, socket or device
            raise MediaPathError(400, f"video_path {shown} is not a file.")
    except (OSError, RuntimeError) as exc:  # a name part over 255 bytes, a symlink loop, ...
        reason = getattr(exc, "strerror", None) or "symlink loop"
        raise MediaPathError(400, f"video_path {shown} is not a usable file name ({reason}).") from None
    return path
