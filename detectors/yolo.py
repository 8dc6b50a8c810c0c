"""`yolo`: the user's own YOLOv8/YOLO11-style ONNX detector (MODEL_PATH, MODEL_LABELS).

Expects one input `[1, 3, S, S]` (float RGB in 0..1) and one output `[1, 4 + classes, N]`
(or `[1, N, 4 + classes]`): box centre x, y, width, height in input pixels, then one score per
class. The frame is letterboxed to S×S, predictions are filtered by score, reduced by per-class
NMS and scaled back to frame pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from detectors.base import Detection
from detectors.coco import COCO_LABELS
from detectors.onnx_session import inference_session

PAD_VALUE = 114  # what Ultralytics pads with
IOU_THRESHOLD = 0.45
MAX_DETECTIONS = 300
MAX_CANDIDATES = 3000  # NMS cost grows with candidates: keep the best ones only


def read_labels(path: Optional[Path]) -> list[str]:
    """A JSON list, or one name per line. Without a file: the COCO names."""
    if path is None:
        return list(COCO_LABELS)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(x).strip().lower() for x in json.loads(text)]
    return [line.strip().lower() for line in text.splitlines() if line.strip()]


def letterbox(frame: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Scale to fit `size`×`size` keeping the aspect ratio, pad the rest; return (image, scale, dx, dy)."""
    h, w = frame.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    out[dy:dy + nh, dx:dx + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r, dx, dy


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression on x1, y1, x2, y2 boxes; returns kept indices, best first."""
    # OpenCV's C++ NMS takes x, y, w, h boxes
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), 0.0, iou)
    return [int(i) for i in np.asarray(kept).reshape(-1)]


class YoloDetector:
    name = "yolo"

    def __init__(self, model_path: Path, labels_path: Optional[Path], threshold: float, threads: int = 1) -> None:
        self.threshold = threshold
        self.session = inference_session(model_path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        side = inp.shape[2] if len(inp.shape) == 4 else None
        self.size = side if isinstance(side, int) and side > 0 else 640
        self.labels = read_labels(labels_path)

    def decode(self, output: np.ndarray, scale: float, dx: int, dy: int, w: int, h: int) -> list[Detection]:
        pred = output[0]
        # Ultralytics exports [4 + classes, N]; some exports give [N, 4 + classes]. Decide by
        # the label count when it fits, else by shape (there are far more boxes than classes).
        channels = 4 + len(self.labels)
        if pred.shape[0] == channels or (pred.shape[1] != channels and pred.shape[0] < pred.shape[1]):
            pred = pred.T
        class_scores = pred[:, 4:]
        cls = class_scores.argmax(axis=1)
        conf = class_scores[np.arange(len(cls)), cls]
        mask = conf >= self.threshold
        if not mask.any():
            return []
        cx, cy, bw, bh = pred[mask, :4].T
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        conf, cls = conf[mask], cls[mask]
        if len(conf) > MAX_CANDIDATES:
            best = np.argsort(conf)[::-1][:MAX_CANDIDATES]
            boxes, conf, cls = boxes[best], conf[best], cls[best]
        # class-aware NMS in one pass: shift each class's boxes apart
        shifted = boxes + (cls[:, None] * (self.size + 1.0))
        keep = nms(shifted, conf, IOU_THRESHOLD)[:MAX_DETECTIONS]
        boxes = (boxes[keep] - [dx, dy, dx, dy]) / scale
        boxes = boxes.clip([0, 0, 0, 0], [w, h, w, h]).round().astype(int)
        return [Detection(self._label(int(c)), float(s), tuple(int(v) for v in b))
                for b, s, c in zip(boxes, conf[keep], cls[keep])]

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"class{index}"

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, list[Detection]]:
        h, w = frame.shape[:2]
        img, scale, dx, dy = letterbox(frame, self.size)
        blob = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        (output,) = self.session.run(None, {self.input_name: blob})[:1]
        return frame, self.decode(output, scale, dx, dy, w, h)
