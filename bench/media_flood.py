"""Media flood (not a test): a camera-mode client replays a pre-encoded keyframe as fast as
asked against `python main.py`, then hangs up. Reports the server's peak RSS, the slowest
`/health` answer during the flood and while the session closes, and how the session ended.
A guard kills the server past `--max-rss-mb` so that a server without limits cannot take the box.

    .venv/bin/python bench/media_flood.py --width 3840 --height 2160 --fps 180 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.churn_soak import proc_figures  # noqa: E402
from bench.server import server  # noqa: E402


async def run(width: int, height: int, fps: float, seconds: float, max_rss_mb: float) -> dict:
    import httpx
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

    from media_flood import FloodTrack, encoded_keyframe
    from webrtc.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    data = encoded_keyframe("vp8", width, height)
    with server(DEFAULT_MODEL="none") as (url, proc):
        peak, slowest, killed = 0.0, 0.0, False

        async def watch(stop: asyncio.Event, http) -> None:
            nonlocal peak, slowest, killed
            while not stop.is_set():
                try:
                    rss = proc_figures(proc.pid)["rss_mb"]
                except FileNotFoundError:
                    return
                peak = max(peak, rss)
                if rss > max_rss_mb and not killed:
                    killed = True
                    proc.kill()
                    return
                t0 = time.perf_counter()
                try:
                    await http.get("/health", timeout=60)
                except httpx.HTTPError:
                    pass
                slowest = max(slowest, time.perf_counter() - t0)
                await asyncio.sleep(0.2)

        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            track = FloodTrack(data, fps)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() == "video/vp8"])
            await pc.setLocalDescription(await pc.createOffer())
            r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
            answer = r.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            stop = asyncio.Event()
            watcher = asyncio.ensure_future(watch(stop, http))
            await asyncio.sleep(seconds)
            flood_slowest = slowest
            await pc.close()  # hang up
            slowest = 0.0
            await asyncio.sleep(5)
            stop.set()
            await watcher
            closed = None if killed else (await http.get("/info")).json()["sessions"]["closed"]
    return {"frame": f"{width}x{height} VP8 keyframe, {len(data)} bytes", "fps_asked": fps,
            "frames_sent": track.sent, "seconds": seconds, "peak_rss_mb": peak,
            "killed_by_guard": killed, "slowest_health_during_flood_s": round(flood_slowest, 3),
            "slowest_health_after_hangup_s": round(slowest, 3), "closed": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--fps", type=float, default=180)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-rss-mb", type=float, default=4000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.width, args.height, args.fps, args.seconds, args.max_rss_mb)), indent=2))


if __name__ == "__main__":
    main()
