"""Thread lifecycle and the watchdog: stuck stages restarted within a rate limit (and /health
says so while a stage flaps), a stop that nothing undoes, captures that close their own source,
and a source started again only after the previous capture let go of it."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np

import core.workers as workers
import hub as hub_module
from core.workers import Worker
from detectors import ModelRegistry
from hub import PipelineHub
from sources.capture import Capture
from sources.spec import SourceSpec
from conftest import running_server
from rtc_client import connect
from test_capture import wait_for


def test_a_stuck_step_is_restarted_and_restarts_are_rate_limited(monkeypatch):
    monkeypatch.setattr(workers, "MAX_RESTARTS", 2)
    release = threading.Event()
    entered = []
    worker = Worker("vg-test-stuck", lambda: (entered.append(threading.get_ident()), release.wait(30)),
                    stuck_after=0.2)
    worker.start()
    try:
        reasons = []
        deadline = time.monotonic() + 20
        while worker.restarts < 2 and time.monotonic() < deadline:
            if why := worker.ensure_alive():
                reasons.append(why)
            time.sleep(0.05)
        assert worker.restarts == 2 and all("no progress" in r for r in reasons)
        assert len(set(entered)) == 3, "each restart runs in a new thread"
        time.sleep(0.3)
        assert worker.ensure_alive() is None and worker.restarts == 2, "the third restart waits for the window"
        assert worker.flapping and "restarted" in worker.last_error
    finally:
        release.set()
        worker.stop()
    assert not worker.alive


def test_stop_is_one_way_even_against_the_watchdog():
    worker = Worker("vg-test-stop", lambda: time.sleep(0.01))
    worker.start()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    while not worker.stop_event.is_set():
        worker.ensure_alive()  # the watchdog racing the stop
    stopper.join(10)
    for _ in range(20):
        assert worker.ensure_alive() is None
        time.sleep(0.01)
    assert not worker.alive and worker.restarts == 0
    try:
        worker.start()
        raise AssertionError("a stopped worker started again")
    except RuntimeError:
        pass


class Recorded:
    """A source that records which thread opens and closes it, and when."""

    kind, paced, fps = "device", False, 30.0
    log: list = []

    def __init__(self, open_delay: float = 0.0) -> None:
        self.open_delay = open_delay

    def open(self) -> None:
        Recorded.log.append(("open", threading.get_ident(), time.monotonic(), self))
        time.sleep(self.open_delay)

    def read(self):
        time.sleep(0.01)
        return np.zeros((48, 64, 3), np.uint8)

    def close(self) -> None:
        Recorded.log.append(("close", threading.get_ident(), time.monotonic(), self))


def test_the_capture_thread_closes_its_own_source_even_if_stopped_while_opening():
    Recorded.log = []
    cap = Capture(SourceSpec(name="t", kind="device"), lambda: Recorded(open_delay=0.5), 64, 48, 30)
    cap.start()
    assert wait_for(lambda: Recorded.log)  # inside open()
    cap.stop()  # joins: the thread finishes opening, sees the stop, closes what it opened
    assert [e[0] for e in Recorded.log] == ["open", "close"]
    assert Recorded.log[0][1] == Recorded.log[1][1] != threading.get_ident()
    assert Recorded.log[0][3] is Recorded.log[1][3] and cap.released.is_set()


async def test_a_source_started_again_waits_for_the_previous_capture(monkeypatch):
    Recorded.log = []
    registry = ModelRegistry(0.5)
    registry.load("none")
    hub = PipelineHub(64, 48, 30)
    spec = SourceSpec(name="cam", kind="device")
    slow_close = threading.Event()

    class SlowToClose(Recorded):
        def close(self) -> None:
            slow_close.wait(0.3)  # a V4L2 device takes its time to let go
            super().close()

    try:
        first = hub.acquire(spec, registry.entries["none"], source_factory=SlowToClose)
        assert await asyncio.to_thread(wait_for, lambda: first.capture.state == "live")
        releasing = asyncio.ensure_future(hub.release(first))
        await asyncio.sleep(0)  # the release has begun; the old capture is still closing
        second = hub.acquire(spec, registry.entries["none"], source_factory=SlowToClose)
        await releasing
        assert await asyncio.to_thread(wait_for, lambda: second.capture.state == "live")
        events = [(kind, t) for kind, _, t, _ in Recorded.log]
        assert [k for k, _ in events[:3]] == ["open", "close", "open"], events
        assert events[2][1] >= events[1][1], "the device was opened again before it was closed"
        await hub.release(second)
    finally:
        await asyncio.to_thread(hub.stop_all)


class Hangs:
    """Test-only model that hangs on every frame (a stuck inference)."""

    name = "hangs"

    def process(self, frame):
        time.sleep(3)
        return frame, []


async def test_a_flapping_stage_degrades_health_while_the_video_goes_on(monkeypatch):
    monkeypatch.setattr(hub_module, "STAGE_STUCK_S", 0.5)
    monkeypatch.setattr(workers, "MAX_RESTARTS", 2)
    async with running_server() as (url, svc):
        svc.models.register("hangs", "test", Hangs)
        viewer = await connect(url, model="hangs")
        await viewer.receive(10)
        async with httpx.AsyncClient(base_url=url) as http:
            async def flapping():
                health = (await http.get("/health")).json()
                return health["status"] == "degraded" and any("keeps failing" in p for p in health["problems"])
            from test_webrtc import wait_until

            assert await wait_until(flapping, 20)
            (pipe,) = svc.hub._pipelines.values()
            assert pipe.stage.worker.restarts == 2
            frames = await viewer.receive(30)  # the clock thread is not the stuck one
            assert len(frames) == 30
        await viewer.close()


def test_a_join_that_times_out_is_logged_and_the_thread_ends_on_its_own(caplog):
    release = threading.Event()
    worker = Worker("vg-test-slow-stop", lambda: release.wait(30))
    worker.start()
    assert wait_for(lambda: worker.alive)
    with caplog.at_level("WARNING", logger="visionguard.workers"):
        worker.stop(timeout=0.2)  # its step is still blocked
    assert "vg-test-slow-stop did not stop within" in caplog.text
    assert worker.alive
    release.set()
    assert wait_for(lambda: not worker.alive), "it ends after its current step"
