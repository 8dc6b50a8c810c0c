from __future__ import annotations

import numpy as np

from detectors.base import Detection


class PassThrough:
    """`none`: the frame as it came, nothing detected."""

    name = "none"

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, list[Detection]]:
        return frame, []
