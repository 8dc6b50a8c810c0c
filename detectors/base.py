from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels


class Processor(Protocol):
    name: str

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, list[Detection]]:
        """`frame` is BGR and read-only; return a (possibly new) frame and detections."""
