"""What is drawn on outgoing frames: boxes where objects are, and a status band at the bottom
(time, fps, inference ms, notices)."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


BOX_COLOUR = (0, 220, 0)


def render(frame: np.ndarray, detections, text: str, notice: str = "") -> np.ndarray:
    """A copy of `frame` with the detections' boxes and the status band drawn on it."""
    out = frame.copy()
    draw_detections(out, detections)
    _draw_band(out, text, notice)
    return out


def draw_status(frame: np.ndarray, text: str, notice: str = "") -> np.ndarray:
    """Return a copy of `frame` with a dark band along the bottom holding `text` (and a notice)."""
    out = frame.copy()
    _draw_band(out, text, notice)
    return out


def draw_detections(out: np.ndarray, detections) -> None:
    """Boxes with "label score" tags, readable at 640×480 (drawn in place)."""
    scale = max(0.45, out.shape[1] / 1400)
    for d in detections:
        x1, y1, x2, y2 = d.box
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, 2)
        tag = f"{d.label} {d.score:.2f}"
        (tw, th), base = cv2.getTextSize(tag, FONT, scale, 1)
        ty = y1 - 4 if y1 - th - 6 >= 0 else y1 + th + 4
        tx = max(0, min(x1, out.shape[1] - tw - 4))  # keep the tag inside the frame
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 4, ty + base - 1), BOX_COLOUR, -1)
        cv2.putText(out, tag, (tx + 2, ty - 1), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _draw_band(out: np.ndarray, text: str, notice: str) -> None:
    h, w = out.shape[:2]
    band = max(22, h // 18)
    y0 = h - band
    out[y0:] = (out[y0:] * 0.35).astype(np.uint8)
    scale = band / 40
    cv2.putText(out, text, (8, h - band // 3), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if notice:
        (tw, _), _ = cv2.getTextSize(notice, FONT, scale, 1)
        cv2.putText(out, notice, (w - tw - 8, h - band // 3), FONT, scale, (0, 200, 255), 1, cv2.LINE_AA)


def placeholder(width: int, height: int, message: str) -> np.ndarray:
    """A frame to show while a source has nothing (connecting, reconnecting, failed)."""
    frame = np.full((height, width, 3), 40, np.uint8)
    scale = width / 900
    (tw, th), _ = cv2.getTextSize(message, FONT, scale, 2)
    cv2.putText(frame, message, ((width - tw) // 2, (height + th) // 2), FONT, scale,
                (220, 220, 220), 2, cv2.LINE_AA)
    return frame
