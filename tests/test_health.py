"""`/health` tells the truth: `degraded`, with a reason, while a pipeline stage fails on every
frame, while an encoder keeps failing, or while the event loop lags; `healthy` again once the
fault is gone. (A source that is down: tests/test_sources.py, the RTSP outage test.)"""

from __future__ import annotations

import time
from functools import partial

import httpx
import pytest

import pipeline.encoder_pool as encoder_pool
from conftest import build_test_app, running_server
from rtc_client import connect
from test_webrtc import wait_until


class Broken:
    def process(self, image):
        raise RuntimeError("the model broke")


class FailingEncoder:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def encode(self, *args):
        raise RuntimeError("the encoder broke")


async def health(http: httpx.AsyncClient) -> dict:
    answer = await http.get("/health")
    assert answer.status_code == 200  # always, while the process runs
    return answer.json()


async def test_health_is_degraded_while_a_stage_an_encoder_or_the_loop_fails(monkeypatch):
    async with running_server() as (url, svc):
        viewer = await connect(url, detections=True)
        async with httpx.AsyncClient(base_url=url) as http:
            assert await wait_until(lambda: len(viewer.messages) >= 3, 30)
            assert (await health(http))["status"] == "healthy"
            pipeline = svc.hub.pipelines_for("default")[0]

            async def says(fragment: str) -> bool:
                found = await health(http)
                return found["status"] == "degraded" and any(fragment in p for p in found["problems"])

            async def healthy() -> bool:
                return (await health(http))["status"] == "healthy"

            # the model raises on every frame
            working, pipeline.stage.processor = pipeline.stage.processor, Broken()
            assert await wait_until(partial(says, "failed on its last"), 20)
            assert await says("the model broke")
            pipeline.stage.processor = working
            assert await wait_until(healthy, 20), await health(http)

            # the shared encoder keeps failing (and so does every replacement)
            monkeypatch.setattr(encoder_pool, "SharedEncoder", FailingEncoder)
            pipeline.encoders.get("vp8").encode = FailingEncoder().encode
            assert await wait_until(partial(says, "encoder failed"), 20), await health(http)
            monkeypatch.undo()
            assert await wait_until(healthy, 30), await health(http)  # replaced after its backoff

            # slow work on the event loop: five 0.6 s stalls within the minute (p99 > 250 ms; the
            # lag monitor wakes every 0.25 s, so each stall makes it at least 0.35 s late)
            for _ in range(5):
                time.sleep(0.6)  # blocks the loop the server runs on, on purpose
                await wait_until(lambda: False, 0.3)
            assert await says("event loop lags"), await health(http)
        await viewer.close()


def test_loop_lag_p99_covers_the_last_minute_only():
    from core.looplag import LoopLag

    lag = LoopLag(window_s=60)  # a sample every 0.25 s: 240 a minute, so the p99 is the 3rd largest
    now = time.monotonic()
    for i in range(237):
        lag.record(0.001, now - 59 + i * 0.25)
    for big in (0.4, 0.5, 0.6):
        lag.record(big, now)
    assert lag.p99() == 0.4
    young = LoopLag(window_s=60)  # a process younger than a minute needs as many stalls
    young.record(0.9, now)
    young.record(0.8, now)
    assert young.p99() == 0.0  # two slow moments are not a lagging loop
    young.record(0.3, now)
    assert young.p99() == 0.3
    stale = LoopLag(window_s=60)
    for big in (5.0, 5.0, 5.0):
        stale.record(big, now - 61)
    for small in (0.002, 0.002, 0.002):
        stale.record(small, now)
    assert stale.p99() == 0.002  # stalls more than a minute ago no longer count


async def test_start_up_objects_are_left_out_of_the_collectors_full_passes():
    """A full GC pass over the start-up heap stalled the loop for up to 178 ms (core/gcpause.py)."""
    import gc

    async with running_server():
        assert gc.get_freeze_count() > 10_000  # FastAPI, aiortc, the model runtime, the settings
        async with running_server():  # a second app in the same process
            pass
        assert gc.get_freeze_count() > 10_000  # its stop leaves the first app's heap frozen
    assert gc.get_freeze_count() == 0  # thawed when the last app stops: a stopped app can be collected


async def test_a_start_up_that_fails_after_the_freeze_leaves_the_heap_thawed(monkeypatch):
    import gc

    from events import EventService

    async def broken(self):
        raise RuntimeError("events could not start")

    monkeypatch.setattr(EventService, "start", broken)
    app = build_test_app()
    with pytest.raises(RuntimeError, match="could not start"):
        async with app.router.lifespan_context(app):
            pass
    assert gc.get_freeze_count() == 0  # else no later app in this process would ever thaw
    monkeypatch.undo()
    async with running_server():  # and the next app freezes and thaws as usual
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
