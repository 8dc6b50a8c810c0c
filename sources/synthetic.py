"""The embedded default source: a moving pattern with a clock and a frame counter,
so that video plays with no file, camera or network."""

from __future__ import annotations

import time

import cv2
import numpy as np


class SyntheticSource:
    kind = "synthetic"
    paced = True

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._n = 0
        # A colour gradient twice as wide as the frame; each frame shows a shifted window.
        x = np.linspace(0, 255, 2 * width, dtype=np.float32)
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        band = np.empty((height, 2 * width, 3), np.uint8)
        band[..., 0] = (x[None, :] * 0.6 + y * 0.2).astype(np.uint8)
        band[..., 1] = (np.abs(127 - x[None, :] / 2) + y * 0.3).astype(np.uint8)
        band[..., 2] = (255 - x[None, :] * 0.5).astype(np.uint8)
        band[:, width:] = band[:, width - 1 :: -1]  # mirror so the scroll wraps without a seam
        self._band = band

    def open(self) -> None:
        self._n = 0

    def read(self) -> np.ndarray:
        w, h, n = self.width, self.height, self._n
        off = (n * 4) % (2 * self.width)
        frame = np.roll(self._band, -off, axis=1)[:, :w].copy()
        cx = int(w / 2 + (w / 3) * np.sin(n / 20))
        cy = int(h / 2 + (h / 4) * np.cos(n / 15))
        cv2.circle(frame, (cx, cy), max(8, h // 10), (255, 255, 255), -1)
        cv2.putText(frame, "VisionGuard synthetic source", (12, 32), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(frame, f"frame {n}  {time.strftime('%H:%M:%S')}", (12, 64),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        self._n += 1
        return frame

    def close(self) -> None:
        pass
