"""Event recordings (RECORD_EVENTS): a person_seen starts a recording that begins RECORD_PRE_S
before it (packets kept since, no decode), person_gone ends it RECORD_POST_S later, and both
events carry its id. Also the pre-roll ring on its own."""

from __future__ import annotations


import av
import httpx

from conftest import people_and_blank, running_server
from pipeline.encoders import EncodedFrame
from recording import PreRoll, probe
from sse_client import SseClient
from test_recording import one
from test_webrtc import wait_until

PRE_S, POST_S, HOLD_S, KEYFRAME_S = 2.0, 1.0, 1.0, 1.0


async def test_a_visit_is_recorded_from_before_it_began_until_after_it_ended(vtest, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    people_and_blank(vtest, media / "door.avi", [("blank", 3.0), ("people", 3.0)])
    sources = {"door": {"url": "door.avi", "model": "person", "always_on": True}}
    async with running_server(MEDIA_DIR=media, SOURCES=sources, RECORD_EVENTS=True, RECORD_PRE_S=PRE_S,
                              RECORD_POST_S=POST_S, EVENT_HOLD_S=HOLD_S, KEYFRAME_INTERVAL=KEYFRAME_S,
                              TARGET_FPS=15, RECORDINGS_DIR=tmp_path / "rec") as (url, svc):
        async with SseClient(url, "/api/events/stream?source=door") as sse, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert await sse.wait_for(lambda ev: any(e["event"] == "person_gone" for e in ev), 40), sse.events
            seen = next(e["data"] for e in sse.events if e["event"] == "person_seen")
            gone = next(e["data"] for e in sse.events if e["event"] == "person_gone")
            assert seen["recording_id"] and gone["recording_id"] == seen["recording_id"]
            assert gone["visit_id"] == seen["visit_id"]
            recording_id = seen["recording_id"]

            async def done() -> bool:
                return (await one(http, recording_id)).get("state") == "done"
            assert await wait_until(done, 20), await one(http, recording_id)
            info = await one(http, recording_id)
            assert info["trigger"] == "event" and info["source"] == "door"
            listed = (await http.get("/api/events", params={"source": "door"})).json()["events"]
            assert {e["recording_id"] for e in listed if e["visit_id"] == seen["visit_id"]} == {recording_id}

        started = _unix(info["started_at"])
        print(f"\nevent recording: begins {seen['ts'] - started:.2f} s before person_seen (RECORD_PRE_S={PRE_S}), "
              f"ends {_unix(info['ended_at']) - gone['ts']:.2f} s after person_gone (RECORD_POST_S={POST_S})")
        # it begins RECORD_PRE_S before person_seen, back to a keyframe (≤ KEYFRAME_S more);
        # the event is stamped when the tracker decides, a frame or two after the frame itself
        assert seen["ts"] - PRE_S - KEYFRAME_S - 1.0 <= started <= seen["ts"] - PRE_S + 0.5, (started, seen["ts"])
        # ... and ends RECORD_POST_S after person_gone
        assert _unix(info["ended_at"]) >= gone["ts"] + POST_S - 0.2
        file = tmp_path / "rec" / f"{recording_id}.mp4"
        duration = probe(file)[0]
        assert duration >= PRE_S + (gone["ts"] - seen["ts"]) + POST_S - 1.0, duration
        with av.open(str(file)) as container:
            first = next(container.decode(video=0))
            assert first.key_frame and first.width == 640


def _unix(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class FakePipeline:
    fps = 10

    def __init__(self) -> None:
        self.taps, self.codecs = [], []

    def use_codec(self, codec):
        self.codecs.append(codec)

    def drop_codec(self, codec):
        self.codecs.remove(codec)

    def add_tap(self, tap):
        self.taps.append(tap)

    def remove_tap(self, tap):
        self.taps.remove(tap)


class Out:
    def __init__(self, pts: int, keyframe: bool) -> None:
        self.encoded = {"h264": EncodedFrame("h264", b"x", pts, keyframe)}


def test_the_pre_roll_keeps_at_least_its_span_from_a_keyframe_and_lets_go_of_the_encoder():
    pipeline = FakePipeline()
    preroll = PreRoll(pipeline, seconds=2.0)
    preroll.start()
    assert pipeline.codecs == ["h264"] and len(pipeline.taps) == 1
    tap = pipeline.taps[0]
    tap(Out(0, keyframe=False))  # before the first keyframe: nothing to begin with
    assert preroll.frames() == []
    for i in range(1, 101):  # 10 s at 10 fps, a keyframe every second
        tap(Out(i * 9000, keyframe=i % 10 == 0))
        frames = preroll.frames()
        if frames:
            assert frames[0].keyframe
            span = frames[-1].pts - frames[0].pts
            assert span < 3 * 90000  # never more than the span plus one keyframe interval
            if i >= 30:
                assert span >= 2 * 90000
    preroll.stop()
    assert pipeline.codecs == [] and pipeline.taps == [] and preroll.frames() == []
