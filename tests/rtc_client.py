"""A real aiortc client for tests: loopback ICE, no STUN."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Optional

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError


@dataclass
class Viewer:
    pc: RTCPeerConnection
    session_id: str
    track_future: asyncio.Future
    messages: list = field(default_factory=list)  # (arrival time, decoded JSON) from `detections`

    async def track(self, timeout: float = 20.0):
        return await asyncio.wait_for(asyncio.shield(self.track_future), timeout)

    async def receive(self, n: int, timeout: float = 60.0, keep_every: int = 1) -> list[tuple[float, np.ndarray]]:
        """Receive `n` decoded frames; return (arrival time, BGR image) of every `keep_every`-th (the last included)."""
        track = await self.track()
        out = []
        deadline = time.monotonic() + timeout
        for i in range(n):
            frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
            if (i + 1) % keep_every == 0:  # the last of each group
                out.append((time.monotonic(), frame.to_ndarray(format="bgr24")))
        return out

    async def close(self) -> None:
        await self.pc.close()


async def connect(base_url: str, timeout: float = 30.0, detections: bool = False, send_track=None,
                  **fields) -> Viewer:
    """View mode; with `send_track`, camera mode (the track is sent and comes back processed)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if send_track is not None:
        pc.addTransceiver(send_track, direction="sendrecv")
    else:
        pc.addTransceiver("video", direction="recvonly")
    loop = asyncio.get_running_loop()
    track_future: asyncio.Future = loop.create_future()
    messages: list = []
    if detections:
        channel = pc.createDataChannel("detections")
        channel.on("message", lambda m: isinstance(m, str) and messages.append((time.monotonic(), json.loads(m))))

    @pc.on("track")
    def on_track(track):
        if not track_future.done():
            track_future.set_result(track)

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as http:
        r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", **fields})
    if r.status_code != 200:
        await pc.close()
        raise AssertionError(f"offer refused: {r.status_code} {r.text}")
    body = r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return Viewer(pc=pc, session_id=body["session_id"], track_future=track_future, messages=messages)


async def track_ended(track, timeout: float) -> bool:
    """True once `track.recv()` raises MediaStreamError (the remote ended it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
        except MediaStreamError:
            return True
        except asyncio.TimeoutError:
            return False
    return False
