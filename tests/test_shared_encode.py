"""Encode once for every viewer: identical encoded frames, keyframe first for late joiners,
PLI honoured by the shared encoder; and the per-viewer mode for comparison."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ai_stream import JOIN_BEHIND, AIProcessedStream
from conftest import running_server
from rtc_client import EncodedLog, connect, is_keyframe, pli
from test_webrtc import wait_until


class SenderEncoders:
    """Records aiortc's own per-sender encoders (`aiortc.rtcrtpsender.get_encoder`, the name the
    sender calls): how often each one encoded a frame and packed a pre-encoded packet. In shared
    mode aiortc must make none: each viewer's sender sends the pipeline's payloads."""

    def __init__(self, monkeypatch) -> None:
        import aiortc.rtcrtpsender as sender_module

        original = sender_module.get_encoder
        self.encoders: list[dict] = []
        self._lock = threading.Lock()
        log = self

        def get_encoder(codec):
            inner = original(codec)
            counts = {"codec": codec.mimeType.lower(), "encode": 0, "pack": 0}
            with log._lock:
                log.encoders.append(counts)
            encode, pack = inner.encode, inner.pack

            def counting_encode(*args, **kwargs):  # aiortc calls it in an executor thread
                with log._lock:
                    counts["encode"] += 1
                return encode(*args, **kwargs)

            def counting_pack(*args, **kwargs):
                with log._lock:
                    counts["pack"] += 1
                return pack(*args, **kwargs)

            inner.encode, inner.pack = counting_encode, counting_pack
            return inner

        monkeypatch.setattr(sender_module, "get_encoder", get_encoder)

    def total(self, what: str) -> int:
        with self._lock:
            return sum(c[what] for c in self.encoders)


def contiguous_in(needle: list[bytes], haystack: list[bytes]) -> bool:
    if not needle or needle[0] not in haystack:
        return False
    start = haystack.index(needle[0])
    return haystack[start:start + len(needle)] == needle


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_viewers_get_identical_encoded_frames_and_late_joiners_start_on_a_keyframe(monkeypatch, codec):
    log = EncodedLog().install(monkeypatch)
    senders = SenderEncoders(monkeypatch)
    async with running_server(KEYFRAME_INTERVAL=60) as (url, svc):  # no periodic keyframes in the way
        a = await connect(url, codec=codec)
        await a.receive(45)
        b = await connect(url, codec=codec)  # joins mid-GOP
        frames_b = await b.receive(60)
        assert frames_b[-1][1].shape == (480, 640, 3) and frames_b[-1][1].std() > 10  # b decodes and plays
        await a.receive(20)
        (pipe,) = svc.hub.stats()["pipelines"]
        (encoder,) = pipe["encoders"]
        assert encoder["codec"] == codec and pipe["viewers"] == 2
        data_a = [d for _, _, d in log.of(a)]
        data_b = [d for _, _, d in log.of(b)]
        assert is_keyframe(codec, data_b[0]), "a late joiner must start on a keyframe"
        assert is_keyframe(codec, data_a[0])
        assert len(data_b) >= 60
        # after depacketising, b's frames are exactly the frames a received at the same time
        assert contiguous_in(data_b[:60], data_a), "viewers did not get identical encoded frames"
        # encoded and packetised once for both: aiortc made no encoder of its own for either
        # viewer (the counter is in the path: the per-viewer test below sees it count)
        assert senders.encoders == []
        for v in (a, b):
            session = svc.sessions.get(v.session_id)
            assert session.track.codec == codec
            await v.close()


async def test_a_viewers_pli_makes_the_shared_encoder_emit_a_keyframe(monkeypatch):
    log = EncodedLog().install(monkeypatch)
    async with running_server(KEYFRAME_INTERVAL=60) as (url, svc):
        viewer = await connect(url)
        await viewer.receive(60)
        keyframes_before = sum(is_keyframe("vp8", d) for _, _, d in log.of(viewer))
        (pipe,) = svc.hub._pipelines.values()
        forced_before = pipe.encoders.get("vp8").forced_keyframes
        track = svc.sessions.get(viewer.session_id).track
        requests_before = track.keyframe_requests  # 0 or 1: the join may start at a fresh keyframe
        await pli(viewer)  # what a browser sends after packet loss
        await viewer.receive(30)
        assert await wait_until(lambda: sum(is_keyframe("vp8", d) for _, _, d in log.of(viewer)) > keyframes_before, 10)
        assert pipe.encoders.get("vp8").forced_keyframes > forced_before
        assert track.keyframe_requests > requests_before  # the PLI reached the viewer's track
        await viewer.close()


async def test_per_viewer_encode_mode_still_works(monkeypatch):
    log = EncodedLog().install(monkeypatch)
    senders = SenderEncoders(monkeypatch)
    async with running_server(ENCODE_MODE="per_viewer") as (url, svc):
        a = await connect(url)
        b = await connect(url)
        fa, fb = await asyncio.gather(a.receive(45, keep_every=45), b.receive(45, keep_every=45))
        assert fa[0][1].std() > 10 and fb[0][1].std() > 10
        (pipe,) = svc.hub.stats()["pipelines"]
        assert pipe["encoders"] == [] and pipe["viewers"] == 2
        assert svc.sessions.get(a.session_id).track.codec is None
        assert log.of(a) and log.of(b)
        # here aiortc encodes for each viewer (and the shared-mode check above can see it)
        assert len(senders.encoders) == 2 and all(c["encode"] >= 40 for c in senders.encoders), senders.encoders
        for v in (a, b):
            await v.close()


def ring_from(pipe, seq: int) -> list:
    """The ring's ticks from `seq` on."""
    out = []
    while (tick := pipe.after(seq - 1 + len(out))[0]) is not None:
        out.append(tick)
    return out


async def test_a_viewer_joining_just_after_a_keyframe_starts_on_it_and_asks_for_none():
    """A joiner starts at a keyframe up to JOIN_BEHIND ticks old in the ring: that keyframe and the
    ticks after it go out at once, in order, as they are, and nobody pays for a new keyframe."""
    async def nothing(pipeline):
        return None

    async with running_server(KEYFRAME_INTERVAL=60) as (url, svc):
        keeper = await connect(url)
        await keeper.receive(10)
        (pipe,) = svc.hub._pipelines.values()
        for _ in range(20):  # until a join lands 1..JOIN_BEHIND ticks after a keyframe (a busy box skips ticks)
            key = None
            while key is None:  # asked again each tick: a late wake-up must not miss it
                pipe.request_keyframe("vp8")
                await pipe.wait_tick()
                key = pipe.recent_keyframe("vp8", 0)
            while pipe.newest().seq == key.seq:
                await pipe.wait_tick()
            track = AIProcessedStream(pipe, on_end=nothing)
            track.use_shared_encoder("vp8")
            ring = {o.seq: o for o in ring_from(pipe, key.seq)}  # noted before the ring moves on
            newest = pipe.newest().seq
            try:
                sent = [await asyncio.wait_for(track.recv(), 5)]
                while len(sent) <= newest - key.seq:
                    sent.append(await asyncio.wait_for(track.recv(), 5))  # all in the ring: no wait
            finally:
                await track.release()
            ring.update({o.seq: o for o in ring_from(pipe, key.seq)})
            if sent[0] is key.encoded["vp8"] and 1 <= newest - key.seq <= JOIN_BEHIND:
                break
        assert JOIN_BEHIND == 2  # the documented limit (README, doc/WEBRTC_WEBSOCKET_ARCHITECTURE.md)
        assert sent[0] is key.encoded["vp8"], "it starts on that keyframe"
        assert 1 <= newest - key.seq <= JOIN_BEHIND
        assert sent == [ring[key.seq + i].encoded["vp8"] for i in range(len(sent))], "then the ticks after it, in order"
        assert track.keyframe_requests == 0, "it asked nobody to pay for a new keyframe"
        await keeper.close()
