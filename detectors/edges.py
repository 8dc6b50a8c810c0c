from __future__ import annotations

import cv2
import numpy as np

from detectors.base import Detection


class Edges:
    """`edges`: the classic Canny demo. Changes pixels, finds nothing."""

    name = "edges"
    labels: list[str] = []

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, list[Detection]]:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(cv2.Canny(gray, 80, 160), cv2.COLOR_GRAY2BGR), []
