"""The values passed between a pipeline's stages and to its viewers (all immutable)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.encoders import EncodedFrame

VIDEO_CLOCK_RATE = 90000  # RTP video clock: pts are in 1/90000 s


@dataclass(frozen=True)
class ProcessedFrame:
    frame_id: int
    ts: float
    image: np.ndarray  # BGR with overlay, read-only
    detections: list[Any]  # detectors.Detection (label, score, box)
    inference_ms: float
    message: str  # the `detections` DataChannel message, serialised once for every viewer
    pts: int = -1  # the 90 kHz time the message names (camera mode: the pts it is sent with)


@dataclass(frozen=True)
class OutFrame:
    """One clock tick as every viewer receives it. `i420` is shared and read-only."""

    seq: int  # consecutive count of published ticks: a gap means a viewer missed some
    tick: int
    pts: int  # 90 kHz
    frame_id: int  # source frame shown (0 before the first one)
    ts: float  # Unix seconds at capture of that frame
    i420: np.ndarray
    width: int
    height: int
    encoded: dict[str, EncodedFrame] = field(default_factory=dict)  # codec → shared packet


def detections_message(frame_id: int, pts: int, ts: float, model: str, inference_ms: float, width: int,
                       height: int, detections: list[Any]) -> str:
    """The `detections` DataChannel message (see CONTRACT.md), as compact JSON."""
    return json.dumps({
        "frame_id": frame_id, "pts": pts, "ts": round(ts, 3), "model": model,
        "inference_ms": round(inference_ms, 2), "width": width, "height": height,
        "detections": [{"label": d.label, "score": round(d.score, 3), "box": list(d.box)} for d in detections],
    }, separators=(",", ":"))
