"""WebRTC load benchmark (not a test): N aiortc viewers against one source.

Starts `python main.py` in its own process (loopback, no STUN) and connects N viewers from
client processes (aiortc, decoding off by default to spare the client's CPU: each encoded frame
is depacketised and counted, not decoded). Per run it reports, over a fixed window after every
viewer has its first frame:
- fps per viewer (mean, min) and the frame-gap p95/max,
- time to first frame (p50, max),
- queueing delay: each frame's arrival against its RTP timestamp, minus the smallest seen
  (p95, and its trend in ms per second: a queue that grows shows as a positive trend),
- server CPU (% of one core, and CPU ms per delivered frame), its event-loop thread's CPU, the
  load clients' CPU, and RSS at the start and end; with several viewer counts, the CPU per
  added viewer-frame between the fewest and the most,
- for the camera mode: round-trip latency p50/p95 and its trend (bench/camera_latency.py).

    .venv/bin/python bench/webrtc_load.py                    # the whole matrix, table + JSON
    .venv/bin/python bench/webrtc_load.py --viewers 8 --mode shared --seconds 10
    .venv/bin/python bench/webrtc_load.py --viewers 1,32 --mode shared --no-overload --no-camera --model none
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.server import server  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- server measurements ----------------------------------------------------------
def cpu_seconds(pid: int, thread: bool = False) -> float:
    """utime + stime of the process (all threads), or of its main thread alone (`thread`: the
    event loop, where every per-viewer send runs)."""
    path = f"/proc/{pid}/task/{pid}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- client worker process --------------------------------------------------------
def client_worker(url: str, n: int, codec: str, decode: bool, ready: mp.Queue, stop: mp.Event, out: mp.Queue):
    asyncio.run(_client(url, n, codec, decode, ready, stop, out))


async def _client(url, n, codec, decode, ready, stop, out):
    from webrtc.ice import restrict_host_addresses
    from rtc_client import EncodedLog, connect

    restrict_host_addresses(["127.0.0.1"])
    log = EncodedLog(decode=decode, keep_data=False).install()
    viewers, started = [], []
    for _ in range(n):
        started.append(time.monotonic())
        viewers.append(await connect(url, codec=codec))
        await asyncio.sleep(0.05)
    tracks = [await v.track(60) for v in viewers]
    drains = []
    if decode:  # decoded frames must be consumed, or aiortc's track queue grows
        async def drain(track):
            while True:
                await track.recv()
        drains = [asyncio.ensure_future(drain(t)) for t in tracks]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(not log.of(v) for v in viewers):
        await asyncio.sleep(0.1)
    ready.put(os.getpid())
    while not stop.is_set():
        await asyncio.sleep(0.1)
    result = []
    for v, t0 in zip(viewers, started):
        frames = log.of(v)
        result.append({"started": t0, "times": [f[0] for f in frames], "rtp": [f[1] for f in frames]})
    out.put(result)
    for d in drains:
        d.cancel()
    for v in viewers:
        await v.close()


# -- one run ----------------------------------------------------------------------------
def run(viewers: int, mode: str, seconds: float, settings: dict, codec: str = "vp8", decode: bool = False,
        processes: int = 0) -> dict:
    processes = processes or max(1, min(4, viewers // 8))
    with server(ENCODE_MODE=mode, **settings) as (url, proc):
        ready, out, stop = mp.Queue(), mp.Queue(), mp.Event()
        counts = [viewers // processes + (i < viewers % processes) for i in range(processes)]
        workers = [mp.Process(target=client_worker, args=(url, c, codec, decode, ready, stop, out)) for c in counts]
        for w in workers:
            w.start()
        for _ in workers:
            ready.get(timeout=180)
        time.sleep(2)  # settle
        rss0, cpu0, t0 = rss_mb(proc.pid), cpu_seconds(proc.pid), time.monotonic()
        clients0, loop0 = sum(cpu_seconds(w.pid) for w in workers), cpu_seconds(proc.pid, thread=True)
        time.sleep(seconds)
        cpu1, t1, rss1 = cpu_seconds(proc.pid), time.monotonic(), rss_mb(proc.pid)
        clients1, loop1 = sum(cpu_seconds(w.pid) for w in workers), cpu_seconds(proc.pid, thread=True)
        stop.set()
        per_viewer = [v for _ in workers for v in out.get(timeout=120)]
        for w in workers:
            w.join(30)
    return summarise(per_viewer, t0, t1, cpu1 - cpu0, rss0, rss1) | {
        "viewers": viewers, "mode": mode, "codec": codec, "client_cpu_pct": round(100 * (clients1 - clients0) / (t1 - t0), 1),
        "loop_cpu_pct": round(100 * (loop1 - loop0) / (t1 - t0), 1)}


def summarise(per_viewer, t0, t1, cpu_s, rss0, rss1) -> dict:
    window = t1 - t0
    fps, gaps, ttff, delays, trends = [], [], [], [], []
    delivered = 0
    for v in per_viewer:
        times = np.array(v["times"])
        rtp = np.array(v["rtp"], dtype=np.int64)
        if len(times):
            ttff.append(times[0] - v["started"])
        inside = (times >= t0) & (times <= t1)
        t, r = times[inside], rtp[inside]
        delivered += len(t)
        fps.append(len(t) / window)
        if len(t) > 2:
            gaps.extend(np.diff(t))
            # queueing delay: arrival against the sender's clock (RTP ts wraps at 2^32)
            sent = np.unwrap(r.astype(float), period=2**32) / 90000.0
            delay = (t - t[0]) - (sent - sent[0])
            delay -= delay.min()
            delays.extend(delay)
            trends.append(np.polyfit(t - t[0], delay * 1000, 1)[0])
    gaps = np.array(gaps) if gaps else np.array([0.0])
    delays = np.array(delays) if delays else np.array([0.0])
    return {
        "fps_mean": round(statistics.mean(fps), 1), "fps_min": round(min(fps), 1),
        "gap_p95_ms": round(float(np.percentile(gaps, 95)) * 1000, 1), "gap_max_ms": round(float(gaps.max()) * 1000, 1),
        "ttff_p50_ms": round(statistics.median(ttff) * 1000), "ttff_max_ms": round(max(ttff) * 1000),
        "delay_p95_ms": round(float(np.percentile(delays, 95)) * 1000, 1),
        "delay_trend_ms_per_s": round(float(np.mean(trends)), 2) if trends else 0.0,
        "server_cpu_pct": round(100 * cpu_s / window, 1),
        "server_cpu_ms_per_frame": round(1000 * cpu_s / max(1, delivered), 3),
        "rss_start_mb": round(rss0), "rss_end_mb": round(rss1),
    }


# -- the matrix ---------------------------------------------------------------------------------
def heavy_detector(path: Path) -> Path:
    """A stand-in YOLO-shaped ONNX model with real convolution work (~100+ ms per frame here),
    to overload the box with a detector slower than the frame rate."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "images"
    for i, (cin, cout) in enumerate([(3, 32), (32, 64), (64, 64), (64, 64)]):
        w = numpy_helper.from_array(rng.normal(0, 0.05, (cout, cin, 3, 3)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2 if i == 0 else 1] * 2))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    pred = np.zeros((1, 84, 8400), np.float32)
    inits += [numpy_helper.from_array(pred, "pred"), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nodes += [helper.make_node("ReduceMean", [x], ["m"], keepdims=0), helper.make_node("Mul", ["m", "zero"], ["z"]),
              helper.make_node("Add", ["pred", "z"], ["output0"])]
    graph = helper.make_graph(nodes, "heavy", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 8400])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path


def camera_run(settings: dict, model: str, seconds: float) -> dict:
    from bench.camera_latency import measure
    from webrtc.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    with server(**settings) as (url, _):
        return asyncio.run(measure(url, model, seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", default="1,8,32,64")
    ap.add_argument("--mode", default="shared,per_viewer")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--codec", default="vp8")
    ap.add_argument("--decode", action="store_true", help="decode on the client too")
    ap.add_argument("--no-overload", action="store_true")
    ap.add_argument("--model", default="person")
    ap.add_argument("--bitrate", type=int, default=1_000_000, help="VIDEO_BITRATE")
    ap.add_argument("--no-camera", action="store_true", help="skip the camera-mode run")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    # SATURATION_LAG_S=0: this measures what the server does with every viewer it is given
    base = {"DEFAULT_MODEL": args.model, "VIDEO_FILE_PATH": "synthetic", "SATURATION_LAG_S": 0,
            "VIDEO_BITRATE": args.bitrate}
    rows = []
    for mode in args.mode.split(","):
        for n in map(int, args.viewers.split(",")):
            row = run(n, mode, args.seconds, base, args.codec, args.decode)
            row["case"] = f"{args.model}, synthetic 30 fps"
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.no_overload:
        with tempfile.TemporaryDirectory() as tmp:
            heavy = {"DEFAULT_MODEL": "yolo", "MODEL_PATH": str(heavy_detector(Path(tmp) / "heavy.onnx")),
                     "VIDEO_FILE_PATH": "synthetic"}
            for mode, n in [("shared", 64), ("per_viewer", 32)]:
                row = run(n, mode, args.seconds, heavy, args.codec, args.decode)
                row["case"] = "overload: slow detector" + (", more viewers than fit" if mode == "per_viewer" else "")
                rows.append(row)
                print(json.dumps(row), flush=True)
            cam = camera_run({**heavy, "ENCODE_MODE": "shared"}, "yolo", 30)
            cam["case"] = "camera mode, slow detector"
            rows.append(cam)
            print(json.dumps(cam), flush=True)
    if not args.no_camera:
        cam = camera_run({"DEFAULT_MODEL": "person"}, "person", 30)
        cam["case"] = "camera mode, person"
        rows.append(cam)
        print(json.dumps(cam), flush=True)

    print(f"\nmachine: {os.cpu_count()} cores; window {args.seconds:.0f} s; codec {args.codec}; "
          f"client decode {'on' if args.decode else 'off'}\n")
    print("| case | mode | viewers | fps mean | fps min | gap p95 ms | gap max ms | first frame p50/max ms | "
          "delay p95 ms | delay trend ms/s | server CPU % | loop CPU % | CPU ms/frame | client CPU % | RSS MB start→end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "viewers" not in r:
            continue
        print(f"| {r['case']} | {r['mode']} | {r['viewers']} | {r['fps_mean']} | {r['fps_min']} | {r['gap_p95_ms']} | "
              f"{r['gap_max_ms']} | {r['ttff_p50_ms']}/{r['ttff_max_ms']} | {r['delay_p95_ms']} | "
              f"{r['delay_trend_ms_per_s']} | {r['server_cpu_pct']} | {r['loop_cpu_pct']} | {r['server_cpu_ms_per_frame']} | "
              f"{r['client_cpu_pct']} | {r['rss_start_mb']}→{r['rss_end_mb']} |")
    for mode in args.mode.split(","):  # the server's CPU per added viewer-frame, fewest to most viewers
        runs = sorted((r for r in rows if r.get("mode") == mode and "viewers" in r and "overload" not in r["case"]),
                      key=lambda r: r["viewers"])
        if len(runs) >= 2:
            a, b = runs[0], runs[-1]
            added = b["fps_mean"] * b["viewers"] - a["fps_mean"] * a["viewers"]
            print(f"\n{mode}: CPU per added viewer-frame, {a['viewers']} → {b['viewers']} viewers: "
                  f"{10 * (b['server_cpu_pct'] - a['server_cpu_pct']) / added:.3f} ms (process), "
                  f"{10 * (b['loop_cpu_pct'] - a['loop_cpu_pct']) / added:.3f} ms (event loop thread)")
    print("\n| case | fps back | p50 ms | p95 ms | max ms | trend ms/s |\n|---|---|---|---|---|---|")
    for r in rows:
        if "p50_ms" in r:
            print(f"| {r['case']} | {r['fps_received']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
                  f"{r['trend_ms_per_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
