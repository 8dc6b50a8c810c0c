"""One viewer's packet loss does not cost every viewer a keyframe: lost packets are resent to
that viewer alone (NACK, aiortc's RTX), and a viewer whose picture still broke (PLI) waits for
the periodic keyframe unless a quarter of the codec's viewers wait too (or it is alone)."""

from __future__ import annotations

import asyncio
import struct

import pipeline.encoder_pool as encoder_pool
from conftest import running_server
from rtc_client import EncodedLog, connect, is_keyframe, on_rtp, pli
from test_webrtc import wait_until


def keyframes(log, viewer) -> int:
    return sum(is_keyframe("vp8", d) for _, _, d in log.of(viewer))


async def test_a_lone_pli_among_five_viewers_costs_the_others_no_keyframe(monkeypatch):
    monkeypatch.setattr(encoder_pool, "MAX_BROKEN_WAIT_S", 600.0)  # only the quarter rule here
    log = EncodedLog().install(monkeypatch)
    async with running_server(KEYFRAME_INTERVAL=60) as (url, svc):
        viewers = [await connect(url) for _ in range(5)]
        await asyncio.gather(*(v.receive(10) for v in viewers))
        (pipe,) = svc.hub._pipelines.values()
        encoder = pipe.encoders.get("vp8")
        tracks = [svc.sessions.get(v.session_id).track for v in viewers]

        def lost() -> int:  # a viewer that fell behind the ring asks for a keyframe too (a busy box)
            return sum(t.lost for t in tracks)
        asked, lost_before = encoder.keyframe_requests, lost()

        await pli(viewers[0])
        assert await wait_until(lambda: encoder.deferred_requests >= 1, 10)
        assert tracks[0].plis == 1
        got = len(log.of(viewers[0]))
        await viewers[1].receive(30)  # 1 s: no keyframe was asked for anyone
        assert encoder.keyframe_requests - asked == lost() - lost_before
        assert await wait_until(lambda: len(log.of(viewers[0])) >= got + 10, 10), "its deltas keep coming"

        mine = keyframes(log, viewers[0])
        await pli(viewers[1])  # two of five: more than a quarter wait, so everyone gets one
        assert await wait_until(lambda: keyframes(log, viewers[0]) > mine, 10)
        assert encoder.keyframe_requests - asked > lost() - lost_before
        for v in viewers:
            await v.close()


async def test_lost_packets_are_resent_to_that_viewer_alone():
    """NACK and RTX still work on the prepacked payloads (resent from the lean sender's history,
    RTX-wrapped by aiortc: compat/rtp_send.py)."""
    async with running_server() as (url, svc):
        lossy, *others = [await connect(url) for _ in range(5)]
        await asyncio.gather(*(v.receive(10) for v in (lossy, *others)))
        receiver = lossy.pc.getTransceivers()[0].receiver
        media_ssrc = receiver.getSynchronizationSources()[0].source
        seen = {"n": 0}
        dropped, resent = set(), set()

        def lose_some(packet) -> bool:
            if packet.ssrc == media_ssrc:
                seen["n"] += 1
                if seen["n"] % 15 == 0 and not packet.marker:  # not a frame's last packet
                    dropped.add(packet.sequence_number)
                    return False  # lost on the way
            else:  # RTX: the original sequence number leads its payload
                resent.add(struct.unpack("!H", packet.payload[:2])[0])
            return True
        on_rtp(receiver, lose_some)
        others_rtx = []  # RTX packets any other viewer got
        for viewer in others:
            other = viewer.pc.getTransceivers()[0].receiver
            ssrc = other.getSynchronizationSources()[0].source
            on_rtp(other, lambda packet, ssrc=ssrc: packet.ssrc == ssrc or others_rtx.append(packet.ssrc))

        await lossy.receive(90)  # its video goes on (a picture that still broke: the periodic keyframe)
        assert len(dropped) >= 3 and len(resent & dropped) >= len(dropped) // 2, (dropped, resent)
        assert resent <= dropped, "only the lost packets are resent"
        assert others_rtx == [], "to that viewer alone"
        # the send loop keeps the counters aiortc's stats and RTCP sender reports are made of
        sender = svc.sessions.get(lossy.session_id).pc.getSenders()[0]
        (sent,) = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        assert sent.packetsSent >= seen["n"] and sent.bytesSent > 1000 * sent.packetsSent // 2
        reported = [s for s in (await receiver.getStats()).values() if s.type == "remote-outbound-rtp"]
        assert reported and 0 < reported[0].packetsSent <= sent.packetsSent, "a sender report with our count"
        for v in (lossy, *others):
            await v.close()
