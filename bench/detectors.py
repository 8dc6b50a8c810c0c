"""Milliseconds per frame for each model at 640×480 on vtest.avi (a benchmark, not a test).

    .venv/bin/python bench/detectors.py          # every model; ORT_THREADS/CV2_THREADS 1 and 2
    .venv/bin/python bench/detectors.py --frames 300 --models person --threads 1

Prints a Markdown table and, with --json, the raw numbers. Each thread setting (used for both
onnxruntime's intra-op pool and OpenCV's pool, as ORT_THREADS and CV2_THREADS) runs in its own process. The `yolo` row uses a stand-in ONNX graph
built here (no YOLO weights are installable offline), so it measures the letterbox, the
pre-processing and decode/NMS of 8400 candidate boxes, not a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fake_yolo(path: Path) -> Path:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    pred = np.zeros((1, 84, 8400), np.float32)
    pred[0, :4] = rng.uniform(0, 640, (4, 8400))
    pred[0, 4:] = rng.uniform(0, 0.1, (80, 8400))
    pred[0, 4, rng.choice(8400, 40, replace=False)] = 0.9  # 40 candidates above the threshold
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["pred", "z"], ["output0"])],
        "stand_in_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 8400])],
        initializer=[numpy_helper.from_array(pred, "pred"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


def measure(models: list[str], frames: int, threads: int) -> list[dict]:
    import cv2
    import numpy as np

    from detectors import ModelRegistry
    from tests.conftest import VTEST, vtest_frames

    cv2.setNumThreads(threads)
    images = vtest_frames(VTEST, min(frames, 795))
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(0.5, model_path=fake_yolo(Path(tmp) / "yolo.onnx"), threads=threads)
        rows = []
        for name in models:
            model = registry.load(name)
            for img in images[:5]:  # warm-up
                model.process(img)
            times = []
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            for i in range(frames):
                t0 = time.perf_counter()
                model.process(images[i % len(images)])
                times.append((time.perf_counter() - t0) * 1000)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            times = np.array(times)
            rows.append({"model": name, "threads": threads,
                         "frames": frames, "mean_ms": round(times.mean(), 2),
                         "p50_ms": round(float(np.percentile(times, 50)), 2),
                         "p95_ms": round(float(np.percentile(times, 95)), 2),
                         "fps": round(frames / wall, 1), "cpu_cores": round(cpu / wall, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--models", default="none,edges,person,yolo")
    ap.add_argument("--threads", default="1,2", help="ORT_THREADS = CV2_THREADS values to compare")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = args.models.split(",")
    if args.child:
        print(json.dumps(measure(models, args.frames, args.threads_one)))
        return
    rows = []
    for threads in args.threads.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", "--frames", str(args.frames), "--models",
                              args.models, "--threads-one", threads], capture_output=True, text=True, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"machine: {os.cpu_count()} cores, {args.frames} frames of vtest.avi at 640x480\n")
    print("| model | threads | mean ms | p50 ms | p95 ms | fps | CPU cores used |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fps = r["fps"] if r["mean_ms"] >= 0.01 else "-"
        print(f"| {r['model']} | {r['threads']} | {r['mean_ms']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{fps} | {r['cpu_cores']} |")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
