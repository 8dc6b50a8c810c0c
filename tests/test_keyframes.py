"""One viewer's packet loss does not cost every viewer a keyframe: lost packets are resent to
that viewer alone (NACK, aiortc's RTX), and a viewer whose picture still broke (PLI) waits for
the periodic keyframe unless a quarter of the codec's viewers wait too (or it is alone)."""

from __future__ import annotations

import asyncio

from conftest import running_server
from rtc_client import EncodedLog, connect, is_keyframe
from test_webrtc import wait_until


def pli(viewer):
    """Make this client send a PLI now (what a browser does when its picture breaks)."""
    receiver = viewer.pc.getTransceivers()[0].receiver
    (ssrc,) = [s.source for s in receiver.getSynchronizationSources()]
    return receiver._send_rtcp_pli(ssrc)


def keyframes(log, viewer) -> int:
    return sum(is_keyframe("vp8", d) for _, _, d in log.of(viewer))


async def test_a_lone_pli_among_many_viewers_waits_for_the_periodic_keyframe(monkeypatch):
    log = EncodedLog().install(monkeypatch)
    async with running_server(KEYFRAME_INTERVAL=60) as (url, svc):
        viewers = [await connect(url) for _ in range(5)]
        await asyncio.gather(*(v.receive(10) for v in viewers))
        (pipe,) = svc.hub._pipelines.values()
        encoder = pipe.encoders.get("vp8")
        forced, mine, others = encoder.forced_keyframes, keyframes(log, viewers[0]), keyframes(log, viewers[1])
        track = svc.sessions.get(viewers[0].session_id).track

        await pli(viewers[0])
        assert await wait_until(lambda: encoder.deferred_requests >= 1, 10)
        assert track.plis == 1
        await viewers[1].receive(45)  # 1.5 s: no keyframe for anyone (the interval is 60 s)
        assert encoder.forced_keyframes == forced
        assert keyframes(log, viewers[1]) == others
        stalled = len(log.of(viewers[0]))  # no deltas for the broken viewer: they cannot decode

        await pli(viewers[1])  # two of five: a quarter of the viewers wait, so everyone gets one
        assert await wait_until(lambda: encoder.forced_keyframes > forced, 10)
        assert await wait_until(lambda: keyframes(log, viewers[0]) > mine, 10)
        assert await wait_until(lambda: len(log.of(viewers[0])) >= stalled + 10, 10), "its video goes on"
        for v in viewers:
            await v.close()


async def test_lost_packets_are_resent_to_that_viewer_without_a_keyframe():
    async with running_server() as (url, svc):
        lossy, *others = [await connect(url) for _ in range(5)]
        await asyncio.gather(*(v.receive(10) for v in (lossy, *others)))
        (pipe,) = svc.hub._pipelines.values()
        encoder = pipe.encoders.get("vp8")
        forced = encoder.forced_keyframes

        receiver = lossy.pc.getTransceivers()[0].receiver
        media_ssrc = receiver.getSynchronizationSources()[0].source
        handle, seen = receiver._handle_rtp_packet, {"dropped": 0, "resent": 0, "n": 0}

        async def lose_some(packet, arrival_time_ms):
            if packet.ssrc == media_ssrc:
                seen["n"] += 1
                if seen["n"] % 15 == 0 and not packet.marker:  # not a frame's last packet
                    seen["dropped"] += 1
                    return  # lost on the way
            else:
                seen["resent"] += 1  # RTX: a retransmission
            await handle(packet, arrival_time_ms)
        receiver._handle_rtp_packet = lose_some

        await lossy.receive(90)  # its video goes on (a picture that still broke: the periodic keyframe)
        assert seen["dropped"] >= 3 and seen["resent"] >= seen["dropped"] // 2, seen
        # a lone broken viewer of five never forces a keyframe on the four others
        assert encoder.forced_keyframes == forced
        for v in (lossy, *others):
            await v.close()
