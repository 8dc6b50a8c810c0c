"""Each part an `AIProcessor` is composed of, tested alone: the process stage, the ticker, the
encoder pool and the result fan-out."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

import pipeline.encoder_pool as encoder_pool
from core.slots import LatestSlot
from pipeline.encoder_pool import EncoderPool
from pipeline.encoders import EncodeSettings, SharedEncoder
from pipeline.fanout import ResultFanout
from pipeline.frames import VIDEO_CLOCK_RATE
from pipeline.stage import ProcessStage
from pipeline.ticker import RING_TICKS, Ticker

W, H = 160, 120


@dataclass(frozen=True)
class Captured:  # what a capture puts in its slot
    frame_id: int
    ts: float
    image: np.ndarray


def i420(value: int = 100) -> np.ndarray:
    return cv2.cvtColor(np.full((H, W, 3), value, np.uint8), cv2.COLOR_BGR2YUV_I420)


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class Gate:
    """A processor that holds each frame until released, recording the frames it saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.go = threading.Semaphore(0)
        self.entered = threading.Event()  # a frame is inside process()
        self.thread_ids: set[int] = set()

    def process(self, frame):
        self.entered.set()
        self.go.acquire()
        self.seen.append(int(frame[0, 0, 0]))
        self.thread_ids.add(threading.get_ident())
        return frame, []


def test_stage_processes_only_the_newest_frame_and_counts_the_skipped():
    frames, results, gate = LatestSlot(), [], Gate()
    stage = ProcessStage("vg-test-stage", frames, gate, "gate", W, H, on_result=results.append)
    stage.worker.start()
    try:
        frames.put(Captured(1, time.time(), np.full((H, W, 3), 1, np.uint8)))
        assert gate.entered.wait(20)  # the model is busy with frame 1
        for i in range(2, 7):  # five frames arrive meanwhile
            frames.put(Captured(i, time.time(), np.full((H, W, 3), i, np.uint8)))
        gate.go.release()
        gate.go.release()
        assert wait_for(lambda: stage.frames_processed == 2 and len(results) == 2)
        assert gate.seen == [1, 6], "stale frames must be skipped, not queued"
        assert stage.frames_skipped == 4
        assert [r.frame_id for r in results] == [1, 6] and stage.results.peek()[1].frame_id == 6
        assert '"frame_id":6' in results[-1].message and results[-1].image.flags.writeable is False
        assert threading.main_thread().ident not in gate.thread_ids
    finally:
        for _ in range(3):
            gate.go.release()
        stage.worker.stop()
    assert not stage.worker.alive


@dataclass(frozen=True)
class Result:  # a ProcessedFrame without the parts the ticker does not read
    frame_id: int
    ts: float
    image: np.ndarray
    pts: int = -1


async def test_ticker_publishes_every_tick_into_a_bounded_ring():
    results = LatestSlot()
    pool = EncoderPool(W, H, 30)
    ticker = Ticker("vg-test-clock", 30, W, H, results, lambda: "live", pool)
    ticker.start(asyncio.get_running_loop())
    try:
        await ticker.wait_tick()
        first = ticker.newest()
        assert first.frame_id == 0 and first.i420.shape == (H * 3 // 2, W)  # placeholder before a result
        results.put(Result(7, time.time(), np.full((H, W, 3), 200, np.uint8)))
        while (ticker.newest().frame_id != 7):
            await ticker.wait_tick()
        for _ in range(RING_TICKS + 4):
            await ticker.wait_tick()
        out, lost = ticker.after(first.seq)
        assert lost, "a viewer further behind than the ring is told it lost ticks"
        newest = ticker.newest()
        assert newest.seq - out.seq == RING_TICKS - 1
        assert newest.pts == newest.tick * VIDEO_CLOCK_RATE // 30
        ring = [ticker.after(s)[0] for s in range(out.seq - 1, newest.seq)]
        assert [o.seq for o in ring] == list(range(out.seq, newest.seq + 1)), "consecutive ticks"
        assert all(b.pts - a.pts == 3000 * (b.tick - a.tick) for a, b in zip(ring, ring[1:]))
        assert ticker.after(newest.seq) == (None, False)
    finally:
        await asyncio.to_thread(ticker.stop)
    with pytest.raises(Exception):
        await ticker.wait_tick()


async def test_camera_mode_publishes_each_result_on_the_calling_thread_with_its_own_pts():
    """No clock thread: `publish` (the process stage's thread) renders, encodes and rings the
    result at once, with the pts its detections message names (kept increasing)."""
    pool = EncoderPool(W, H, 30, EncodeSettings())
    pool.use("vp8")
    ticker = Ticker("vg-test-camera", 30, W, H, LatestSlot(), lambda: "live", pool, on_results=True)
    ticker.start(asyncio.get_running_loop())
    try:
        assert not ticker.worker.alive, "camera mode starts no clock thread"
        published = []

        def stage():  # what the process stage does with each result
            for frame_id, pts in ((1, 9000), (2, 9000), (3, 12000)):
                ticker.publish(Result(frame_id, time.time(), np.full((H, W, 3), 50 * frame_id, np.uint8), pts), lambda: True)
                published.append(ticker.newest())
        woken = asyncio.ensure_future(ticker.wait_tick())
        await asyncio.sleep(0)
        thread = threading.Thread(target=stage, name="vg-test-proc")
        thread.start()
        thread.join()
        assert [o.frame_id for o in published] == [1, 2, 3] and [o.seq for o in published] == [1, 2, 3]
        assert [o.pts for o in published] == [9000, 9001, 12000]
        assert all(o.encoded["vp8"].payloads for o in published) and published[0].encoded["vp8"].keyframe
        assert abs(int(published[2].i420[0, 0]) - int(cv2.cvtColor(np.full((2, 2, 3), 150, np.uint8),
                                                                   cv2.COLOR_BGR2YUV_I420)[0, 0])) <= 1
        await asyncio.wait_for(woken, 5)  # and the loop was woken for them
        stale = Result(4, time.time(), np.zeros((H, W, 3), np.uint8), 15000)
        ticker.publish(stale, lambda: False)  # from a stage thread a restart left behind
        assert ticker.newest() is published[-1], "a stale thread publishes nothing"
    finally:
        await asyncio.to_thread(ticker.stop)


async def test_a_joining_viewer_is_offered_only_a_keyframe_at_most_n_ticks_old():
    pool = EncoderPool(W, H, 30, EncodeSettings(keyframe_interval_s=60))
    pool.use("vp8")
    ticker = Ticker("vg-test-clock", 30, W, H, LatestSlot(), lambda: "live", pool)
    ticker.start(asyncio.get_running_loop())
    try:
        key = None
        while key is None:  # the encoder starts on a keyframe (asked again if a stall aged it out)
            await ticker.wait_tick()
            key = ticker.recent_keyframe("vp8", RING_TICKS)
            if key is None:
                pool.request_keyframe("vp8")
        found = ticker.recent_keyframe("vp8", 2)
        assert found is key or ticker.newest().seq - key.seq > 2  # (a tick may come in between)
        assert ticker.recent_keyframe("h264", 2) is None  # not encoded
        while ticker.newest().seq - key.seq <= 2:
            await ticker.wait_tick()
        assert ticker.recent_keyframe("vp8", 2) is None, "older than 2 ticks: not a live start"
    finally:
        await asyncio.to_thread(ticker.stop)


def test_a_viewers_pli_forces_a_keyframe_only_for_a_quarter_of_the_viewers_or_after_a_wait(monkeypatch):
    pool = EncoderPool(W, H, 30, EncodeSettings(keyframe_interval_s=60))
    for viewer in (1, 2, 3, 4):
        pool.use("vp8", viewer=viewer)
    pool.use("vp8")  # a recorder: not a viewer
    pool.encode(i420(), 1, 3000)
    encoder = pool.get("vp8")
    pool.request_keyframe("vp8", broken=1)  # one of four viewers (the recorder does not count)
    assert encoder.keyframe_requests == 1 and encoder.deferred_requests == 0
    assert wait_for(lambda: pool.encode(i420(), 2, 6000)["vp8"].keyframe, 5)  # (after the 0.3 s rate limit)
    assert pool._broken["vp8"] == {}  # that keyframe served every waiting viewer

    pool.use("vp8", viewer=5)
    pool.use("vp8", viewer=6)  # six viewers
    pool.request_keyframe("vp8", broken=1)
    pool.request_keyframe("vp8", broken=1)  # a browser repeats its PLI: still one viewer
    assert encoder.keyframe_requests == 1 and encoder.deferred_requests == 2
    pool.drop("vp8", viewer=1)  # it left while waiting: five viewers, none waiting
    pool.request_keyframe("vp8", broken=1)  # a PLI that arrives after its viewer left: ignored
    pool.request_keyframe("vp8", broken=2)
    assert encoder.keyframe_requests == 1 and encoder.deferred_requests == 3  # one of five
    pool.request_keyframe("vp8", broken=3)  # two of five: more than a quarter
    assert encoder.keyframe_requests == 2
    assert wait_for(lambda: pool.encode(i420(), 3, 9000)["vp8"].keyframe, 5)

    pool.request_keyframe("vp8", broken=4)
    assert encoder.keyframe_requests == 2  # deferred again
    monkeypatch.setattr(encoder_pool, "MAX_BROKEN_WAIT_S", 0.05)
    time.sleep(0.06)
    pool.encode(i420(), 4, 12000)  # waited too long: asked without another PLI
    assert encoder.keyframe_requests == 3


def test_a_periodic_keyframe_serves_the_requests_made_before_it():
    encoder = SharedEncoder("vp8", W, H, 30, 500_000, keyframe_interval_s=0.1)  # every 3rd frame
    assert encoder.encode(i420(), 1, 3000).keyframe and encoder.forced_keyframes == 1  # the first
    encoder.request_keyframe()  # within the 0.3 s rate limit: pending
    keyframes = [encoder.encode(i420(), t, t * 3000).keyframe for t in (2, 3, 4)]
    assert keyframes[-1] and encoder.forced_keyframes == 1  # the periodic one came first
    time.sleep(0.35)
    encoder.encode(i420(), 5, 15000)
    assert encoder.forced_keyframes == 1, "no second keyframe for a request it already served"


def test_encoder_pool_encodes_once_per_codec_in_use_and_starts_on_a_keyframe():
    pool = EncoderPool(W, H, 30)
    assert pool.encode(i420(), 1, 3000) == {}  # nobody watches: nothing is encoded
    pool.use("vp8")
    pool.use("vp8")
    pool.use("h264")
    out = pool.encode(i420(), 2, 6000)
    assert sorted(out) == ["h264", "vp8"] and out["vp8"].keyframe and out["h264"].keyframe
    assert pool.get("vp8").frames == 1, "two viewers, one encode"
    pool.drop("h264")
    assert sorted(pool.encode(i420(), 3, 9000)) == ["vp8"] and pool.get("h264") is None


def test_a_failing_encoder_never_holds_up_the_other_codec_and_is_retried_with_backoff(monkeypatch):
    errors = []
    pool = EncoderPool(W, H, 30, on_error=errors.append)
    real = encoder_pool.SharedEncoder
    clock = [1000.0]
    monkeypatch.setattr(encoder_pool.time, "monotonic", lambda: clock[0])

    def shared_encoder(codec, *args):
        if codec == "h264":
            raise RuntimeError("no H.264 encoder here")
        return real(codec, *args)

    monkeypatch.setattr(encoder_pool, "SharedEncoder", shared_encoder)
    pool.use("h264")
    pool.use("vp8")
    attempts = []
    for tick in range(1, 200):  # about 6.6 s of ticks
        clock[0] += 1 / 30
        before = len(errors)
        assert list(pool.encode(i420(), tick, tick * 3000)) == ["vp8"]
        if len(errors) > before:
            attempts.append(round(clock[0] - 1000, 2))
    assert "h264 encoder: RuntimeError" in errors[0]
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) == 4 and all(b > a for a, b in zip(gaps, gaps[1:])), attempts  # 0.5, 1, 2, 4 s
    monkeypatch.setattr(encoder_pool, "SharedEncoder", real)  # it recovers, from a keyframe
    clock[0] += encoder_pool.RETRY_MAX_S
    out = pool.encode(i420(), 200, 600000)
    assert sorted(out) == ["h264", "vp8"] and out["h264"].keyframe


async def test_fanout_delivers_on_the_loop_and_a_raising_listener_starves_no_other():
    fanout = ResultFanout()
    loop = asyncio.get_running_loop()
    fanout.start(loop)
    got, threads = [], set()

    def bad(result):
        raise ValueError("listener bug")

    def good(result):
        got.append(result)
        threads.add(threading.get_ident())

    fanout.add(bad)
    fanout.add(good)
    worker = threading.Thread(target=lambda: [fanout.publish(i) for i in range(3)])
    worker.start()
    worker.join()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got and got[-1] == 2, "the newest result reaches the good listener"
    assert threads == {threading.get_ident()}, "listeners run on the event loop"
    assert fanout.listener_errors >= 1
    fanout.remove(good)
    fanout.remove(bad)
    fanout.publish(99)  # no listener: nothing scheduled
    await asyncio.sleep(0.05)
    assert 99 not in got
