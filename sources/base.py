from __future__ import annotations

from typing import Optional, Protocol

import numpy as np


class SourceError(Exception):
    """A source cannot be opened or read. The message is safe to show to clients."""


class FrameSource(Protocol):
    kind: str
    #: native frame rate (frames per second)
    fps: float
    #: True when the reader must pace itself to `fps` (files, synthetic);
    #: False for live sources whose `read` blocks until the next frame.
    paced: bool

    def open(self) -> None: ...

    def read(self) -> Optional[np.ndarray]:
        """The next BGR frame (any size), or None when nothing new is available."""

    def close(self) -> None: ...
