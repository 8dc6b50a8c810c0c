"""Media a client sends cannot exhaust the server: oversized or too many camera frames are
refused before decoding, the decoder's backlog is bounded, closing never waits for a decoder on
the event loop, and a view-mode offer cannot make the server receive a second video."""

from __future__ import annotations

import asyncio
import gc
import time

import av
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from conftest import running_server
from media_flood import FloodTrack, MemoryGuard, encoded_keyframe
from test_webrtc import wait_until


async def flood(url: str, svc, data: bytes, fps: float, codec: str = "vp8"):
    """A camera-mode client (sendonly: it receives nothing) replaying `data` at `fps`; returns it
    with the server session's decode gate, taken before any frame can arrive (the session lets
    go of its gate when it ends, which a flood can make happen quickly)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = FloodTrack(data, fps)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() == f"video/{codec}"])
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    gate = svc.sessions.get(sid).gate  # no media flows before the answer is applied below
    await pc.setRemoteDescription(RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
    return pc, track, sid, gate


def video_frames_alive() -> int:
    return sum(isinstance(o, av.VideoFrame) for o in gc.get_objects())


async def health_seconds(http: httpx.AsyncClient) -> float:
    t0 = time.perf_counter()
    assert (await http.get("/health")).status_code == 200
    return time.perf_counter() - t0


async def test_4k_keyframe_flood_is_refused_before_decoding_and_the_session_closed():
    data = encoded_keyframe("vp8", 3840, 2160)
    async with running_server() as (url, svc):
        pc, track, sid, gate = await flood(url, svc, data, fps=180)
        guard = MemoryGuard(pc.close, limit=2 * 2**30)
        try:
            assert await wait_until(lambda: sid not in svc.sessions.sessions or guard.tripped, 30)
            assert not guard.tripped, f"memory grew to {guard.peak >> 20} MB"
            assert svc.sessions.closed_reasons.get("camera-limits") == 1, svc.sessions.closed_reasons
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                # measured before the fix: /health blocked 44.7 s once a 4K flood hung up
                assert await health_seconds(http) < 5.0
            stats = gate.stats()
            assert stats["dropped"].get("too_large", 0) >= 30 and stats["admitted"] == 0, stats
            assert video_frames_alive() < 20, "nothing was decoded"
            async with httpx.AsyncClient(base_url=url) as http:
                dropped = (await http.get("/info")).json()["sessions"]["camera_frames_dropped"]
            assert dropped["too_large"] >= 30, "the operator sees what was refused"
        finally:
            guard.close()
            await pc.close()
        assert track.sent > 100


async def test_too_many_frames_per_second_are_dropped_and_the_session_closed():
    codec = "h264"  # the 4K flood above is VP8
    data = encoded_keyframe(codec, 640, 480)
    async with running_server(CAMERA_MAX_FPS=20) as (url, svc):
        pc, track, sid, gate = await flood(url, svc, data, fps=90, codec=codec)
        try:
            assert await wait_until(lambda: gate.admitted >= 10, 20), gate.stats()
            assert await wait_until(lambda: sid not in svc.sessions.sessions, 20)
            assert svc.sessions.closed_reasons.get("camera-limits") == 1
            stats = gate.stats()
            assert stats["dropped"]["too_fast"] > stats["admitted"], stats  # ~70 of 90 each second
        finally:
            await pc.close()


class SlowDecoder:
    """A decoder slower than the camera (50 ms a frame): the gate's backlog bound is under test."""

    def __init__(self, codec) -> None:
        from aiortc.codecs import get_decoder

        self.inner = get_decoder(codec)

    def decode(self, encoded_frame):
        time.sleep(0.05)
        return self.inner.decode(encoded_frame)


async def test_the_decoder_backlog_is_bounded_and_closing_never_waits_for_it(monkeypatch):
    import aiortc.rtcrtpreceiver as receiver_module

    from webrtc.limits import BACKLOG_FRAMES

    monkeypatch.setattr(receiver_module, "get_decoder", SlowDecoder)
    data = encoded_keyframe("vp8", 1280, 720)
    async with running_server(CAMERA_MAX_FPS=240) as (url, svc):
        pc, track, sid, gate = await flood(url, svc, data, fps=120)
        backlog = []
        try:
            for _ in range(30):  # 3 s: ~360 frames sent, ~60 decodable
                backlog.append(gate.qsize())
                await asyncio.sleep(0.1)
            stats = gate.stats()
            assert stats["dropped"].get("backlog", 0) > 50, stats
            assert max(backlog) <= BACKLOG_FRAMES
            assert sid in svc.sessions.sessions, "a slow server is not the client's fault"
            assert video_frames_alive() < 50
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                t0 = time.perf_counter()
                assert (await http.delete(f"/api/session/{sid}")).status_code == 200
                took = time.perf_counter() - t0
                after = await health_seconds(http)
            # Unbounded, ~300 frames would wait here at 50 ms each: closing would join the decoder
            # thread on the event loop for ~15 s. 3 s is a 5x margin.
            assert took < 3.0 and after < 3.0, (took, after)
        finally:
            await pc.close()


async def test_a_second_video_section_in_a_view_offer_is_answered_inactive():
    data = encoded_keyframe("vp8", 1920, 1080)
    async with running_server() as (url, svc):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver(FloodTrack(data, 30), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert r.status_code == 200, r.text
        sections = r.json()["sdp"].split("m=video")[1:]
        assert len(sections) == 2 and "a=inactive" in sections[1] and "a=sendonly" in sections[0]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
        received = pc.getTransceivers()[0].receiver.track
        for _ in range(30):
            await received.recv()  # the view itself plays
        session = svc.sessions.get(r.json()["session_id"])
        second = session.pc.getTransceivers()[1]
        assert second.currentDirection == "inactive"
        await asyncio.sleep(2)  # the client keeps sending on it meanwhile
        assert second.receiver._RTCRtpReceiver__decoder_thread is None, "the second video is being decoded"
        first = session.pc.getTransceivers()[0].receiver
        assert first._RTCRtpReceiver__decoder_thread is None  # the view's own section only sends
        await pc.close()


def test_frame_sizes_are_read_from_encoded_frames():
    from webrtc.bitstream import h264_access_unit, h264_nal_units, vp8_keyframe_size

    assert vp8_keyframe_size(encoded_keyframe("vp8", 3840, 2160)) == (3840, 2160)
    assert vp8_keyframe_size(b"\x01" + bytes(20)) is None  # an inter frame carries no size
    # the coded size, not the cropped one: cropping hides pixels the decoder still decodes
    assert h264_access_unit(encoded_keyframe("h264", 1918, 1078)) == (True, (1920, 1088))
    # a unit carrying a 4K SPS and then a small one is as big as its biggest
    big, small = encoded_keyframe("h264", 3840, 2160), encoded_keyframe("h264", 640, 480)
    sps_small = next(n for n in h264_nal_units(small) if n and n[0] & 0x1F == 7)
    assert h264_access_unit(big + b"\x00\x00\x00\x01" + sps_small) == (True, (3840, 2160))
    with pytest.raises(ValueError):
        vp8_keyframe_size(b"")
    with pytest.raises(ValueError):
        vp8_keyframe_size(bytes(10))  # a keyframe tag without the start code
    with pytest.raises(ValueError):
        h264_access_unit(b"\x00\x00\x01\x67" + bytes(40))  # an SPS of zeros: a runaway Exp-Golomb code
