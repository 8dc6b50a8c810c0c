"""The anchor for camera-mode latency: a minimal aiortc echo server (not VisionGuard).

Like the `none` transform of aiortc's `examples/server`: a track that returns each frame it
receives, as it is, encoded by aiortc's own VP8 encoder (its default bitrate). Same HTTP shape
as VisionGuard's offer (`POST /api/offer` {sdp, type} → {sdp, type, session_id}), so the same
client measures both. Loopback host candidates only, no STUN.

    .venv/bin/python bench/echo_server.py --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import uvicorn
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from webrtc.ice import restrict_host_addresses  # noqa: E402

peers: set[RTCPeerConnection] = set()


class Echo(MediaStreamTrack):
    kind = "video"

    def __init__(self, track: MediaStreamTrack) -> None:
        super().__init__()
        self.track = track

    async def recv(self):
        return await self.track.recv()


async def offer(request: Request) -> JSONResponse:
    body = await request.json()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.add(pc)

    @pc.on("track")
    def on_track(track):
        pc.addTrack(Echo(track))

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState in ("failed", "closed"):
            peers.discard(pc)
            await pc.close()

    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    return JSONResponse({"sdp": pc.localDescription.sdp, "type": "answer", "session_id": str(uuid.uuid4())})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "healthy"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8100)
    args = ap.parse_args()
    restrict_host_addresses(["127.0.0.1"])
    app = Starlette(routes=[Route("/api/offer", offer, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
