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
    pts: list = field(default_factory=list)  # RTP timestamp (90 kHz) of every frame `receive` took, in order

    async def track(self, timeout: float = 20.0):
        return await asyncio.wait_for(asyncio.shield(self.track_future), timeout)

    async def receive(self, n: int, timeout: float = 60.0, keep_every: int = 1) -> list[tuple[float, np.ndarray]]:
        """Receive `n` decoded frames; return (arrival time, BGR image) of every `keep_every`-th (the last included).
        Every frame's pts is appended to `self.pts`."""
        track = await self.track()
        out = []
        deadline = time.monotonic() + timeout
        for i in range(n):
            frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
            self.pts.append(frame.pts)
            if (i + 1) % keep_every == 0:  # the last of each group
                out.append((time.monotonic(), frame.to_ndarray(format="bgr24")))
        return out

    async def close(self) -> None:
        await self.pc.close()

    def vanish(self) -> None:
        """Disappear without a word (a killed tab, a lost network): the UDP sockets under this
        client's ICE connection close; no BYE, no DTLS close (aioice 0.13's `_protocols`)."""
        ice = self.pc.getTransceivers()[0].receiver.transport.transport
        for protocol in ice._connection._protocols:
            protocol.transport.close()


async def connect(base_url: str, timeout: float = 30.0, detections: bool = False, send_track=None,
                  codec: Optional[str] = None, configuration: Optional[RTCConfiguration] = None,
                  token: Optional[str] = None, **fields) -> Viewer:
    """View mode; with `send_track`, camera mode (the track is sent and comes back processed).
    `codec` ("vp8" or "h264") is offered alone. `configuration`: the client's own (default: no
    ICE servers, loopback host candidates)."""
    pc = RTCPeerConnection(configuration or RTCConfiguration(iceServers=[]))
    if send_track is not None:
        transceiver = pc.addTransceiver(send_track, direction="sendrecv")
    else:
        transceiver = pc.addTransceiver("video", direction="recvonly")
    if codec is not None:
        from aiortc import RTCRtpSender

        caps = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() == f"video/{codec}"])
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
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer", **fields},
                            headers=headers)
    if r.status_code != 200:
        await pc.close()
        raise AssertionError(f"offer refused: {r.status_code} {r.text}")
    body = r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return Viewer(pc=pc, session_id=body["session_id"], track_future=track_future, messages=messages)


def pts_steps(pts: list[int]) -> list[int]:
    """Differences between consecutive RTP timestamps (90 kHz, modulo 2**32: the sender starts
    at a random offset). The server stamps 90000 / TARGET_FPS per tick, so at 30 fps every step
    is 3000 unless a tick was skipped or a frame lost."""
    return [(b - a) % 2**32 for a, b in zip(pts, pts[1:])]


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


class EncodedLog:
    """Records, per receiving decoder thread, every depacketised encoded frame (and optionally
    skips decoding it, to spare the client's CPU in benchmarks). Install with `install()`."""

    def __init__(self, decode: bool = True, keep_data: bool = True) -> None:
        import threading

        self.decode = decode
        self.keep_data = keep_data
        self.frames: dict[int, list[tuple[float, int, bytes]]] = {}  # thread id → (arrival, rtp ts, data)
        self._lock = threading.Lock()

    def install(self, monkeypatch=None):
        import aiortc.rtcrtpreceiver as receiver_module

        original = receiver_module.get_decoder
        log = self

        class Recording:
            def __init__(self, codec) -> None:
                self.inner = original(codec) if log.decode else None

            def decode(self, encoded_frame):
                import threading

                data = bytes(encoded_frame.data) if log.keep_data else b""
                entry = (time.monotonic(), encoded_frame.timestamp, data)
                with log._lock:
                    log.frames.setdefault(threading.get_ident(), []).append(entry)
                return self.inner.decode(encoded_frame) if self.inner else []

        if monkeypatch is not None:
            monkeypatch.setattr(receiver_module, "get_decoder", Recording)
        else:
            receiver_module.get_decoder = Recording
        return self

    def of(self, viewer: "Viewer") -> list[tuple[float, int, bytes]]:
        receiver = viewer.pc.getTransceivers()[0].receiver
        thread = receiver._RTCRtpReceiver__decoder_thread  # aiortc 1.16
        if thread is None:  # not receiving yet
            return []
        with self._lock:
            return list(self.frames.get(thread.ident, []))


def is_keyframe(codec: str, data: bytes) -> bool:
    if codec == "vp8":
        return len(data) > 0 and (data[0] & 1) == 0  # VP8 frame tag: P bit 0 = key frame
    # H.264 Annex B from aiortc's depacketiser: an IDR slice (type 5) makes a keyframe
    nal_types = {data[i + 3] & 0x1F for i in range(len(data) - 4) if data[i:i + 3] == b"\x00\x00\x01"}
    return 5 in nal_types


def pli(viewer: Viewer):
    """Make this client send a PLI now (what a browser does when its picture breaks; aiortc
    1.16's `_send_rtcp_pli`)."""
    receiver = viewer.pc.getTransceivers()[0].receiver
    (ssrc,) = [s.source for s in receiver.getSynchronizationSources()]
    return receiver._send_rtcp_pli(ssrc)


def on_rtp(receiver, check) -> None:
    """Call `check(packet)` on every RTP packet this client's `receiver` gets, before aiortc's
    jitter buffer and decoder (aiortc 1.16's `_handle_rtp_packet`, wrapped): False drops it, as
    if lost on the way. Tests and benches instrument the client here, not the server."""
    handle = receiver._handle_rtp_packet

    async def checked(packet, arrival_time_ms):
        if check(packet) is not False:
            await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = checked
