"""Cluster benchmark (not a test): 1 worker vs 2 workers on one Redis, and offer hand-off cost.

Four sources (media/vtest.avi at 30 fps, model `person`), one viewer each (one aiortc client
process, frames depacketised and counted, not decoded). For 1 and for 2 workers (each a
`python main.py` on its own port, REDIS_URL shared; offers go round-robin over the workers and
the cluster places each source on the least-loaded one), over a fixed window:
- aggregate processed fps (the cluster's `visionguard_processed_frames_total`, all workers),
- viewer fps (mean, min), server CPU (% of one core, all workers together).
Then signaling latency (POST /api/offer → answer) with the sources running, 20 offers each:
to the worker that owns the source (local) vs to the other one (handed over Redis).

    .venv/bin/python bench/cluster.py                 # both runs, table + JSON
    .venv/bin/python bench/cluster.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.webrtc_load import cpu_seconds  # noqa: E402
from cluster_nodes import info, start_nodes  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from rtc_client import EncodedLog, connect  # noqa: E402
from webrtc.ice import restrict_host_addresses  # noqa: E402

SOURCES = {f"cam{i}": {"url": "vtest.avi", "model": "person", "fps": 30} for i in range(1, 5)}


def processed(nodes) -> float:
    total = 0.0
    for node in nodes:
        for line in httpx.get(node.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("visionguard_processed_frames_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def offer_latency(url: str, source: str, n: int) -> list[float]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    times = []
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(n):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            t0 = time.perf_counter()
            r = await http.post(url + "/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer",
                                                          "source": source})
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
            await http.delete(f"{url}/api/session/{r.json()['session_id']}")
            await pc.close()
    return times


async def run(workers: int, seconds: float, redis_url: str, tmp: Path) -> dict:
    nodes = start_nodes(redis_url, tmp / f"w{workers}", workers, SOURCES=SOURCES, DEFAULT_MODEL="person",
                        SESSION_TTL_S=15, VIDEO_FILE_PATH="vtest.avi")
    log = EncodedLog(decode=False, keep_data=False).install()
    viewers = []
    try:
        for i, name in enumerate(SOURCES):
            viewers.append(await connect(nodes[i % workers].url, source=name))
        for v in viewers:
            await v.track(60)
        await asyncio.sleep(3)  # settle: every pipeline warm
        owners = {}
        for node in nodes:
            for capture in info(node)["pipelines"]["captures"]:
                owners[capture["source"]] = node.name
        p0, c0, f0, t0 = processed(nodes), sum(cpu_seconds(n.proc.pid) for n in nodes), \
            [len(log.of(v)) for v in viewers], time.monotonic()
        await asyncio.sleep(seconds)
        p1, c1, f1, t1 = processed(nodes), sum(cpu_seconds(n.proc.pid) for n in nodes), \
            [len(log.of(v)) for v in viewers], time.monotonic()
        window = t1 - t0
        fps = [(b - a) / window for a, b in zip(f0, f1)]
        result = {"workers": workers, "seconds": round(window, 1), "owners": owners,
                  "processed_fps_total": round((p1 - p0) / window, 1),
                  "viewer_fps_mean": round(statistics.mean(fps), 1), "viewer_fps_min": round(min(fps), 1),
                  "server_cpu_pct": round(100 * (c1 - c0) / window, 0)}
        if workers > 1:
            source = "cam1"
            owner = next(n for n in nodes if n.name == owners[source])
            other = next(n for n in nodes if n is not owner)
            for load in ("busy", "idle"):  # busy: the 4 streams run; idle: only cam1's viewer is left
                if load == "idle":
                    for v in viewers[1:]:
                        await v.close()
                    await asyncio.sleep(2)
                local = await offer_latency(owner.url, source, 20)
                handed = await offer_latency(other.url, source, 20)
                result[f"offer_ms_{load}"] = {
                    "local_p50": round(statistics.median(local) * 1000, 1), "local_max": round(max(local) * 1000, 1),
                    "handed_p50": round(statistics.median(handed) * 1000, 1),
                    "handed_max": round(max(handed) * 1000, 1)}
        return result
    finally:
        for v in viewers:
            await v.close()
        for node in nodes:
            node.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    redis = RedisServer()
    redis.start()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                results.append(await run(workers, args.seconds, redis.url, Path(tmp)))
                redis.stop()  # a clean Redis for the next run
                redis.start()
    finally:
        redis.stop()
    print("| workers | processed fps (4 sources) | viewer fps mean / min | server CPU (all workers) |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['processed_fps_total']} | {r['viewer_fps_mean']} / {r['viewer_fps_min']} | "
              f"{r['server_cpu_pct']:.0f} % |")
    print("\n| offer → answer (20 each) | local p50 / max | handed to the owner p50 / max |\n|---|---|---|")
    for load, o in ((k, v) for r in results for k, v in r.items() if k.startswith("offer_ms_")):
        print(f"| {load.removeprefix('offer_ms_')} | {o['local_p50']} / {o['local_max']} ms | "
              f"{o['handed_p50']} / {o['handed_max']} ms |")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
