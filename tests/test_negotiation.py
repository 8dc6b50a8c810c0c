"""The codec a viewer gets is the one the answer negotiated, read from the answer SDP (aiortc
drops H.264 profiles it cannot send, so the offer's first codec is not always the one chosen)."""

from __future__ import annotations

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from conftest import running_server
from webrtc.sdp import OfferError, negotiated_codec

ANSWER = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
          "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=inactive\r\na=rtpmap:0 PCMU/8000\r\n"
          "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
          "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=98\r\na=rtpmap:98 H264/90000\r\n"
          "a=fmtp:98 packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:99 VP8/90000\r\n")


def test_the_codec_is_read_from_the_answers_section():
    assert negotiated_codec(ANSWER, "1") == "h264"  # rtx is skipped, the section is found by mid
    with pytest.raises(OfferError):
        negotiated_codec(ANSWER, "0")


@pytest.mark.parametrize("first_h264_profile,expected", [("42e01f", "h264"), ("640032", "vp8")])
async def test_the_viewer_sends_the_negotiated_codec(first_h264_profile, expected):
    """Offer H.264 first and VP8 second. With a High-profile H.264 (which aiortc cannot send),
    the answer picks VP8 and the viewer must get VP8 packets, and video must play."""
    async with running_server() as (url, svc):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in caps if c.mimeType.lower() == "video/h264"
                and c.parameters.get("profile-level-id") == "42e01f"]
        vp8 = [c for c in caps if c.mimeType.lower() == "video/vp8"]
        transceiver.setCodecPreferences(h264 + vp8)
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp.replace("profile-level-id=42e01f", f"profile-level-id={first_h264_profile}")
        assert offer.index("H264/90000") < offer.index("VP8/90000")
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/api/offer", json={"sdp": offer, "type": "offer"})
        assert r.status_code == 200, r.text
        answer = r.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        track = pc.getTransceivers()[0].receiver.track
        frame = None
        for _ in range(20):
            frame = await track.recv()
        assert frame.to_ndarray(format="bgr24").std() > 10, "video plays"
        session = svc.sessions.get(answer["session_id"])
        assert session.track.codec == expected
        (pipe,) = svc.hub.stats()["pipelines"]
        assert [e["codec"] for e in pipe["encoders"]] == [expected]
        await pc.close()
