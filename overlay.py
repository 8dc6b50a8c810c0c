"""What is drawn on outgoing frames: a status band at the bottom (time, fps, notices)."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_status(frame: np.ndarray, text: str, notice: str = "") -> np.ndarray:
    """Return a copy of `frame` with a dark band along the bottom holding `text` (and a notice)."""
    out = frame.copy()
    h, w = out.shape[:2]
    band = max(22, h // 18)
    y0 = h - band
    out[y0:] = (out[y0:] * 0.35).astype(np.uint8)
    scale = band / 40
    cv2.putText(out, text, (8, h - band // 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if notice:
        (tw, _), _ = cv2.getTextSize(notice, FONT, scale, 1)
        cv2.putText(out, notice, (w - tw - 8, h - band // 3), FONT, scale, (0, 200, 255), 1, cv2.LINE_AA)
    return out


def placeholder(width: int, height: int, message: str) -> np.ndarray:
    """A frame to show while a source has nothing (connecting, reconnecting, failed)."""
    frame = np.full((height, width, 3), 40, np.uint8)
    scale = width / 900
    (tw, th), _ = cv2.getTextSize(message, FONT, scale, 2)
    cv2.putText(frame, message, ((width - tw) // 2, (height + th) // 2), FONT, scale,
                (220, 220, 220), 2, cv2.LINE_AA)
    return frame
