"""The recorder's parts without a server: the writer falling behind (drops up to a keyframe,
the file still decodes), segments, the sidecar store (crash recovery, retention), and scopes."""

from __future__ import annotations

import asyncio
import json
import time

import av
import httpx
import numpy as np
from prometheus_client import generate_latest

from config import load_settings
from conftest import TEST_ENV
from core.metrics import Metrics
from pipeline.encoders import SharedEncoder
from pipeline.frames import OutFrame
from recording import Mp4File, Recorder, RecordingStore, probe
from test_auth import JWT, bearer, token
from test_metrics import parse, value

W, H, FPS = 320, 240, 10


class FakePipeline:
    """What a Recorder uses of an AIProcessor, driven tick by tick by the test."""

    def __init__(self, keyframe_interval_s: float = 1.0) -> None:
        self.fps, self.width, self.height, self.model = FPS, W, H, "none"
        self.encoder = SharedEncoder("h264", W, H, FPS, 500_000, keyframe_interval_s)
        self.taps: list = []
        self.codec_users = 0
        self.tick_no = 0

    def add_tap(self, tap) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap) -> None:
        self.taps = [t for t in self.taps if t != tap]

    def use_codec(self, codec: str) -> None:
        self.codec_users += 1

    def drop_codec(self, codec: str) -> None:
        self.codec_users -= 1

    def request_keyframe(self, codec: str) -> None:
        self.encoder.request_keyframe()

    def tick(self) -> None:
        self.tick_no += 1
        i420 = np.full((H * 3 // 2, W), 128, np.uint8)
        i420[:H, (self.tick_no * 5) % (W - 20):][:, :20] = 250  # something moves
        pts = self.tick_no * 9000
        out = OutFrame(self.tick_no, self.tick_no, pts, self.tick_no, time.time(), i420, W, H,
                       {"h264": self.encoder.encode(i420, self.tick_no, pts)})
        for tap in list(self.taps):
            tap(out)


def packets(path) -> list[tuple[int, bool]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]


def decoded_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_a_slow_writer_drops_up_to_a_keyframe_and_the_file_still_decodes(tmp_path, monkeypatch):
    store = RecordingStore(tmp_path)
    pipeline = FakePipeline()
    slow = {"on": False}
    write = Mp4File.write

    def slow_write(self, *args):
        if slow["on"]:
            time.sleep(0.05)
        return write(self, *args)

    monkeypatch.setattr(Mp4File, "write", slow_write)
    metrics = Metrics()
    rec = Recorder(pipeline, store, "cam", "manual", 600, queue_s=0.5,  # 5 frames of room
                   dropped_counter=metrics.recording_dropped.labels("cam"))
    info = rec.start()
    assert pipeline.codec_users == 1 and store.get(info.recording_id).state == "recording"
    for _ in range(10):
        pipeline.tick()
    time.sleep(0.3)
    slow["on"] = True
    for _ in range(40):  # far faster than the writer: the queue overflows
        pipeline.tick()
        time.sleep(0.005)
    slow["on"] = False
    time.sleep(0.3)
    for _ in range(30):
        pipeline.tick()
        time.sleep(0.01)
    final = rec.finish()
    assert pipeline.codec_users == 0 and pipeline.taps == []
    assert rec.dropped > 0 and final.dropped_frames == rec.dropped
    scraped = parse(generate_latest(metrics.registry).decode())  # as /metrics shows it
    assert value(scraped, "visionguard_recording_dropped_frames_total", source="cam") == rec.dropped
    assert final.state == "done" and final.frames == 80 - rec.dropped
    got = packets(store.video_path(final.recording_id))
    assert len(got) == final.frames and got[0] == (0, True)
    for (a, _), (b, key) in zip(got, got[1:]):
        assert b > a
        if b - a > 9000:
            assert key, "a gap ends on a keyframe"
    assert decoded_frames(store.video_path(final.recording_id)) == final.frames
    sidecar = json.loads((tmp_path / f"{final.recording_id}.json").read_text())
    assert sidecar["state"] == "done" and sidecar["source"] == "cam" and sidecar["trigger"] == "manual"


def test_segments_roll_over_on_a_keyframe_without_losing_a_frame(tmp_path):
    store = RecordingStore(tmp_path)
    pipeline = FakePipeline()
    rec = Recorder(pipeline, store, "cam", "continuous", segment_s=2.0)
    rec.start()
    for _ in range(55):
        pipeline.tick()
        time.sleep(0.004)
    rec.finish()
    segments = sorted(store.list(), key=lambda i: i.started_at)
    assert len(segments) >= 2 and all(s.state == "done" and s.trigger == "continuous" for s in segments)
    assert abs(segments[0].duration_s - 2.0) <= 0.31
    assert sum(s.frames for s in segments) == 55
    for s in segments:
        first = packets(store.video_path(s.recording_id))[0]
        assert first == (0, True)


def test_every_segment_asks_for_the_keyframe_that_ends_it(tmp_path):
    """No periodic keyframes: each segment ends only on the keyframe it asked for, one tick early."""
    store = RecordingStore(tmp_path)
    pipeline = FakePipeline(keyframe_interval_s=600)
    rec = Recorder(pipeline, store, "cam", "continuous", segment_s=2.0)
    rec.start()
    for _ in range(2 * 2 * FPS + FPS // 2):
        pipeline.tick()
        time.sleep(0.035)  # wall time between requests > the encoder's 0.3 s rate limit
    rec.finish()
    segments = sorted(store.list(), key=lambda i: i.started_at)
    assert [s.state for s in segments] == ["done"] * 3, segments
    # (a busy box may deliver the asked keyframe a tick or two late)
    assert all(abs(s.duration_s - 2.0) <= 0.25 for s in segments[:2]), segments
    assert pipeline.encoder.forced_keyframes == 3  # the first, then one per roll-over, nothing more


def test_a_sidecar_left_recording_by_a_crash_becomes_done_with_its_real_duration(tmp_path):
    store = RecordingStore(tmp_path)
    pipeline = FakePipeline()
    rec = Recorder(pipeline, store, "cam", "manual", 600)
    info = rec.start()
    for _ in range(35):
        pipeline.tick()
        time.sleep(0.004)
    rec.finish()
    # as a crash leaves it: the sidecar still says recording; the file holds all its fragments
    sidecar = tmp_path / f"{info.recording_id}.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "state": "recording", "ended_at": None,
                                   "duration_s": 0, "bytes": 0}))
    (tmp_path / "0123456789abcdef0123456789abcdef.json").write_text(json.dumps(
        {"recording_id": "x", "source": "cam", "trigger": "manual", "started_at": time.time(), "state": "recording"}))
    (tmp_path / "not-an-id.json").write_text("{}")
    odd = ["[]", "null", "{", json.dumps({"source": "cam", "trigger": "manual", "state": "recording", "started_at": None}),
           json.dumps({"source": "cam", "trigger": "weird", "started_at": 1.0, "state": "done"}),
           json.dumps({"source": "cam", "trigger": "manual", "started_at": 1.0, "state": "paused"}),
           json.dumps({"source": "cam", "trigger": "manual", "started_at": "yesterday", "state": "done"}),
           json.dumps({"source": "cam", "trigger": "manual", "started_at": 1.0, "state": "done", "bytes": "big"})]
    for i, text in enumerate(odd):  # hand-edited or half-written sidecars: skipped, never fatal
        (tmp_path / f"{i:032x}.json").write_text(text)
    again = RecordingStore(tmp_path)
    assert again.load() == 2
    assert again.expired(3600, 1) is not None  # retention still runs over what was loaded
    fixed = again.get(info.recording_id)
    assert fixed.state == "done" and abs(fixed.duration_s - 3.5) < 0.01 and fixed.frames == 35
    assert fixed.bytes == (tmp_path / f"{info.recording_id}.mp4").stat().st_size
    assert json.loads(sidecar.read_text())["state"] == "done"
    lost = again.get("0123456789abcdef0123456789abcdef")
    assert lost.state == "failed" and "does not play" in lost.error
    assert probe(again.video_path(info.recording_id)) == (3.5, 35)


def test_retention_deletes_old_then_oldest_never_one_in_progress(tmp_path):
    store = RecordingStore(tmp_path)
    now = time.time()
    made = []
    for age_h, size, state in [(200, 10, "done"), (5, 1000, "done"), (4, 1000, "failed"), (3, 1000, "done"),
                               (0, 5000, "recording")]:
        info = store.create("cam", "manual", started_at=now - age_h * 3600)
        info.bytes, info.state = size, state
        info.ended_at = None if state == "recording" else info.started_at + 60
        made.append(info.recording_id)
    assert store.expired(168 * 3600, 10**9, now) == [made[0]]  # by age only
    assert store.expired(168 * 3600, 7000, now) == [made[0], made[1]]
    assert store.expired(168 * 3600, 1, now) == made[:4]  # the one in progress stays, whatever its size
    for rid in store.expired(168 * 3600, 7000, now):
        assert store.delete(rid)
    assert [i.recording_id for i in store.list()] == made[:1:-1]
    assert not (tmp_path / f"{made[0]}.json").exists()
    try:
        store.delete(made[4])
        raise AssertionError("deleted a recording in progress")
    except ValueError:
        pass


def test_the_writer_counts_bytes_and_files_start_on_a_keyframe(tmp_path):
    counted = []
    f = Mp4File(tmp_path / "a.mp4", FPS, W, H, on_bytes=counted.append)
    enc = SharedEncoder("h264", W, H, FPS, 500_000, 1.0)
    try:
        f.write(b"\x00\x00\x00\x01\x41", 0, False)
        raise AssertionError("a non-keyframe start was accepted")
    except ValueError:
        pass
    for i in range(12):
        e = enc.encode(np.full((H * 3 // 2, W), i * 10, np.uint8), i, 90000 + i * 9000)
        f.write(e.data, e.pts, e.keyframe)
    assert f.close() is None
    assert sum(counted) == f.bytes == (tmp_path / "a.mp4").stat().st_size
    with av.open(str(tmp_path / "a.mp4")) as c:
        extradata = c.streams.video[0].codec_context.extradata
        assert extradata[0] == 1 and extradata[1] == 0x42  # an avcC record, constrained baseline
    assert packets(tmp_path / "a.mp4")[0] == (0, True)


async def test_scopes_view_lists_and_downloads_admin_starts_stops_deletes(tmp_path):
    import main

    seeded = RecordingStore(tmp_path)
    mine, theirs, source = (seeded.create("default", trigger, owner=owner) for trigger, owner in
                            (("session", "alice"), ("session", "bob"), ("manual", None)))
    for info in (mine, theirs, source):
        info.state, info.ended_at = "done", info.started_at + 1
        seeded.save(info)
        (tmp_path / f"{info.recording_id}.mp4").write_bytes(info.recording_id.encode() * 10)
    app = main.create_app(load_settings(**{**TEST_ENV, **JWT, "RECORDINGS_DIR": tmp_path}))
    app.state.services.recordings.store.load()  # what the lifespan does
    viewer, admin = bearer(token("alice", "view")), bearer(token("root", "admin"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vg") as http:
        listed = (await http.get("/api/recordings", headers=viewer)).json()["recordings"]
        assert {r["recording_id"] for r in listed} == {mine.recording_id, source.recording_id}  # not bob's session
        for r in listed:
            assert "sig=" in r["download_url"] and "sub=alice" in r["download_url"]
            got = await http.get(r["download_url"])  # no header: the signed URL alone
            assert got.status_code == 200 and got.content == r["recording_id"].encode() * 10
        assert (await http.get(f"/api/recordings/{mine.recording_id}")).status_code == 401
        assert (await http.get(f"/api/recordings/{theirs.recording_id}", headers=viewer)).status_code == 404
        assert (await http.get(f"/api/recordings/{theirs.recording_id}", headers=admin)).status_code == 200
        assert len((await http.get("/api/recordings", headers=admin)).json()["recordings"]) == 3
        assert (await http.delete(f"/api/recordings/{source.recording_id}", headers=admin)).json()["deleted"]
        assert not (tmp_path / f"{source.recording_id}.mp4").exists()
        assert (await http.delete(f"/api/recordings/{source.recording_id}", headers=admin)).status_code == 404
        assert (await http.post("/api/sources/default/record", headers=viewer)).status_code == 403
        assert (await http.delete("/api/sources/default/record", headers=viewer)).status_code == 403
        assert (await http.delete(f"/api/recordings/{'a' * 32}", headers=viewer)).status_code == 403
        r = await http.delete("/api/sources/default/record", headers=admin)
        assert r.status_code == 404 and r.json()["code"] == "not_recording"
        assert (await http.post("/api/sources/nope/record", headers=admin)).status_code == 404
        for bad in ("a" * 32, "../../etc/passwd", "A" * 32, "%2e%2e"):
            r = await http.get(f"/api/recordings/{bad}", headers=viewer)
            assert r.status_code == 404 and r.json()["code"] == "not_found", bad
        # recording a session takes `admin` too (CONTRACT: starting/stopping recordings)
        assert (await http.post("/api/record/some-session", headers=viewer)).status_code == 403
        assert (await http.delete("/api/record/some-session", headers=viewer)).status_code == 403
        assert (await http.post("/api/record/some-session", headers=admin)).status_code == 404
        r = await http.post("/api/signed-url", json={"path": f"/api/recordings/{'b' * 32}"}, headers=viewer)
        assert r.status_code == 200 and "sig=" in r.json()["url"]


class Stalling:
    """A camera that stops sending for `stall_s` after its first second (a network hiccup)."""

    kind, paced, fps = "device", False, 30.0

    def __init__(self, stall_s: float) -> None:
        self.stall_s, self.reads = stall_s, 0

    def open(self) -> None:
        pass

    def read(self):
        self.reads += 1
        time.sleep(self.stall_s if self.reads == 30 else 1 / 30)
        return np.full((48, 64, 3), self.reads % 256, np.uint8)

    def close(self) -> None:
        pass


async def test_a_recording_plays_at_real_speed_across_a_stalled_source(tmp_path):
    """The clock repeats the last frame while the source is silent: the file keeps wall time."""

    from detectors import ModelRegistry
    from hub import PipelineHub
    from sources.spec import SourceSpec

    registry = ModelRegistry(0.5)
    registry.load("none")
    hub = PipelineHub(64, 48, 15)
    pipeline = hub.acquire(SourceSpec(name="cam", kind="device"), registry.entries["none"],
                           source_factory=lambda: Stalling(2.0))
    try:
        while pipeline.latest_image() is None:
            await asyncio.sleep(0.05)
        rec = Recorder(pipeline, RecordingStore(tmp_path), "cam", "manual", 600)
        await asyncio.to_thread(rec.start)
        t0, captured = time.monotonic(), pipeline.capture.frames
        await asyncio.sleep(4.0)  # the 2 s stall falls inside
        info = await asyncio.to_thread(rec.finish)
        wall, captured = time.monotonic() - t0, pipeline.capture.frames - captured
    finally:
        await hub.release(pipeline)
        await asyncio.to_thread(hub.stop_all)
    assert captured < (wall - 1.5) * 30, "the source really stalled while it was recorded"
    duration, frames = probe(tmp_path / f"{info.recording_id}.mp4")
    assert info.state == "done" and abs(duration - wall) <= 0.75, (duration, wall)
    assert frames >= 0.8 * duration * 15, (frames, duration)  # the stall was filled, not skipped


async def test_a_stop_that_overtakes_its_start_stops_that_recording(tmp_path):
    from conftest import running_server

    async with running_server(RECORDINGS_DIR=tmp_path, SOURCES={"cam": "synthetic"}) as (url, svc):
        control = svc.recordings
        started, stopped = await asyncio.gather(control.start_source("cam"), control.stop_source("cam"))
        assert stopped is not None and stopped.recording_id == started.recording_id
        assert control.jobs == {} and not svc.hub.pipelines_for("cam")  # nothing left running
