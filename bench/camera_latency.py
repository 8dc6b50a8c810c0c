"""Camera-mode round-trip latency (a benchmark, not a test).

An aiortc client sends 640×480 frames at 30 fps that carry their index as black/white blocks;
the server (`python main.py`, its own process) runs the model and sends them back; the client
reads the index from each returned frame and measures how long the round trip took.

    .venv/bin/python bench/camera_latency.py                     # models none and person, 20 s each
    .venv/bin/python bench/camera_latency.py --models person --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.server import server  # noqa: E402
from marked_frames import MarkedCamera, read_mark  # noqa: E402
from webrtc.ice import restrict_host_addresses  # noqa: E402
from rtc_client import connect  # noqa: E402


def trend_ms_per_s(samples: list[tuple[float, float]]) -> float:
    """Slope of latency over time (least squares), in ms of latency per second of run."""
    t = np.array([a for a, _ in samples])
    y = np.array([b for _, b in samples]) * 1000
    return float(np.polyfit(t - t[0], y, 1)[0]) if len(samples) > 2 else 0.0


async def measure(url: str, model: str, seconds: float) -> dict:
    camera = MarkedCamera(fps=30)
    viewer = await connect(url, send_track=camera, model=model)
    track = await viewer.track()
    samples, last, received = [], None, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        frame = await track.recv()
        received += 1
        now = time.monotonic()
        index = read_mark(frame.to_ndarray(format="bgr24"))
        if index is not None and index != last and index in camera.sent:
            samples.append((now, now - camera.sent[index]))
            last = index
    await viewer.close()
    samples = samples[10:]  # skip the start (first keyframe, warm-up)
    lat = sorted(s for _, s in samples)
    return {"model": model, "seconds": seconds, "frames_received": received,
            "fps_received": round(received / seconds, 1), "distinct_results": len(samples),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1), "trend_ms_per_s": round(trend_ms_per_s(samples), 2)}


async def run(models: list[str], seconds: float) -> list[dict]:
    restrict_host_addresses(["127.0.0.1"])
    rows = []
    for model in models:
        with server(DEFAULT_MODEL="none") as (url, _):
            rows.append(await measure(url, model, seconds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="none,person")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    rows = asyncio.run(run(args.models.split(","), args.seconds))
    print("| model | fps back | distinct results | p50 ms | p95 ms | max ms | trend ms/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fps_received']} | {r['distinct_results']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['max_ms']} | {r['trend_ms_per_s']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
