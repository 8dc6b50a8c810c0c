"""Camera-mode round-trip latency (a benchmark, not a test).

An aiortc client sends 640×480 frames at 30 fps that carry their index as black/white blocks;
the server (`python main.py`, its own process) runs the model and sends them back; the client
reads the index from each returned frame and measures how long the round trip took.

    .venv/bin/python bench/camera_latency.py                     # models none and person, 20 s each
    .venv/bin/python bench/camera_latency.py --models person --seconds 60
    .venv/bin/python bench/camera_latency.py --pairs 3            # against the anchor, interleaved

`--pairs N`: the anchor is `bench/echo_server.py` (a minimal aiortc echo server: each received
frame returned as it is, aiortc's VP8 encoder at its default 500 kbit/s). Anchor and project
run alternately (anchor, project, anchor, project, ...), N pairs per model, measured by the same
client; VisionGuard runs with VIDEO_BITRATE=500000 so that both send at the same bitrate. Each
pair's p50 difference and the median of the differences are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.server import free_port, server, wait_healthy  # noqa: E402
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
    t0 = time.monotonic()
    viewer = await connect(url, send_track=camera, model=model)
    track = await viewer.track()
    first_frame = None
    samples, last, received = [], None, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        frame = await track.recv()
        received += 1
        now = time.monotonic()
        index = read_mark(frame.to_ndarray(format="bgr24"))
        if first_frame is None and index is not None:
            first_frame = now - t0
        if index is not None and index != last and index in camera.sent:
            samples.append((now, now - camera.sent[index]))
            last = index
    inference = None
    try:  # VisionGuard's own figure for the model (the anchor has no /info)
        pipes = httpx.get(url + "/info", timeout=5).json()["pipelines"]["pipelines"]
        inference = next((p["mean_inference_ms"] for p in pipes if p["source"].startswith("camera-")), None)
    except (httpx.HTTPError, KeyError, ValueError):
        pass
    await viewer.close()
    samples = samples[10:]  # skip the start (first keyframe, warm-up)
    lat = sorted(s for _, s in samples)
    return {"model": model, "seconds": seconds, "frames_received": received,
            "fps_received": round(received / seconds, 1), "distinct_results": len(samples),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1), "trend_ms_per_s": round(trend_ms_per_s(samples), 2),
            "first_frame_ms": round((first_frame or 0) * 1000, 1), "mean_inference_ms": inference}


async def run(models: list[str], seconds: float) -> list[dict]:
    restrict_host_addresses(["127.0.0.1"])
    rows = []
    for model in models:
        with server(DEFAULT_MODEL="none") as (url, _):
            rows.append(await measure(url, model, seconds))
    return rows


@contextlib.contextmanager
def echo_server():
    """bench/echo_server.py in its own process (the anchor)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "echo_server.py"), "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, proc, 30):
            raise RuntimeError("the echo server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def pairs(models: list[str], seconds: float, n: int) -> list[dict]:
    restrict_host_addresses(["127.0.0.1"])
    rows = []
    for model in models:
        diffs = []
        for i in range(n):
            with echo_server() as url:
                anchor = await measure(url, "none", seconds)
            with server(DEFAULT_MODEL="none", VIDEO_BITRATE=500000) as (url, _):
                project = await measure(url, model, seconds)
            diffs.append(round(project["p50_ms"] - anchor["p50_ms"], 1))
            rows.append({"model": model, "pair": i + 1, "anchor": anchor, "project": project, "diff_p50_ms": diffs[-1],
                         "diff_first_frame_ms": round(project["first_frame_ms"] - anchor["first_frame_ms"], 1)})
        rows.append({"model": model, "median_diff_p50_ms": statistics.median(diffs)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="none,person")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--pairs", type=int, default=0)
    args = ap.parse_args()
    if args.pairs:
        rows = asyncio.run(pairs(args.models.split(","), args.seconds, args.pairs))
        print("| model | pair | anchor p50 / first frame | VisionGuard p50 / first frame | difference p50 | "
              "VisionGuard mean inference | trend ms/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            if "pair" in r:
                a, p = r["anchor"], r["project"]
                print(f"| {r['model']} | {r['pair']} | {a['p50_ms']} / {a['first_frame_ms']} ms | {p['p50_ms']} / "
                      f"{p['first_frame_ms']} ms | {r['diff_p50_ms']:+} ms | {p['mean_inference_ms']} ms | "
                      f"{p['trend_ms_per_s']} |")
            else:
                print(f"| {r['model']} | median | | | {r['median_diff_p50_ms']:+} ms | | |")
        print(json.dumps(rows))
        return
    rows = asyncio.run(run(args.models.split(","), args.seconds))
    print("| model | fps back | distinct results | p50 ms | p95 ms | max ms | trend ms/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fps_received']} | {r['distinct_results']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['max_ms']} | {r['trend_ms_per_s']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
