"""Video sources: where frames come from. One job per module:
`spec` names and resolves sources, `media` keeps client paths inside MEDIA_DIR, `synthetic`,
`av_source` (files, RTSP, V4L2) and `track` (the viewer's own camera) read frames, and `capture`
runs one reader thread per source and hands frames on through a latest-value slot."""

from sources.base import FrameSource, SourceError
from sources.spec import SourceSpec, open_source

__all__ = ["FrameSource", "SourceError", "SourceSpec", "open_source"]
