"""WebRTC end to end with a real aiortc client over loopback (no STUN)."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from conftest import running_server, write_video
from rtc_client import connect, pts_steps, track_ended


async def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return True
        await asyncio.sleep(interval)
    return False


#: the pts step between consecutive frames at the default TARGET_FPS (30): 90 kHz / 30
TICK_30FPS = 90000 // 30


def output_step(pts: list[int]) -> int:
    """The usual pts step of a viewer's video (the median). The server stamps each tick of its
    output clock, so at 30 fps this is exactly 3000 (a skipped tick or lost frame is 6000); video
    that followed a 10 fps file or a 2 fps model would step 9000 or 45000. Not a wall-clock
    measurement: it does not depend on how busy the machine is."""
    return int(statistics.median(pts_steps(pts)))


@pytest.fixture
def server_process(tmp_path):
    """`python main.py` as a user runs it, on a free port, loopback ICE, no STUN."""
    from bench.server import server

    log = tmp_path / "server.log"
    with server(log=log, MEDIA_DIR=tmp_path) as (url, _):
        yield url, log


async def test_end_to_end_against_python_main(server_process):
    url, log = server_process
    banner = log.read_text()
    assert "Starting VisionGuard v1.0.0" in banner and "synthetic source" in banner
    assert "CORS: Allowing all origins" in banner and "/demo" in banner

    viewer = await connect(url)
    n = 75
    frames = await viewer.receive(n, keep_every=1)
    assert len(frames) == n
    first = frames[0][1]
    assert first.shape == (480, 640, 3)
    last = frames[-1][1]
    assert last.std() > 20, "frame looks blank"
    assert not np.array_equal(frames[10][1], last), "video does not move"
    # one frame per tick of the 30 fps output clock
    assert output_step(viewer.pts[5:]) == TICK_30FPS, pts_steps(viewer.pts)

    async with httpx.AsyncClient(base_url=url) as http:
        sessions = (await http.get("/api/sessions")).json()
        assert sessions == {"active_sessions": [viewer.session_id], "count": 1}
        info = (await http.get(f"/api/session/{viewer.session_id}")).json()
        assert info["connection_state"] == "connected" and info["signaling_state"] == "stable"
        assert info["ice_gathering_state"] == "complete"
        track = await viewer.track()
        r = await http.delete(f"/api/session/{viewer.session_id}")
        assert r.status_code == 200 and r.json()["active_connections"] == 0
        assert await track_ended(track, timeout=15), "client track did not end after DELETE"
        assert (await http.get("/api/sessions")).json()["count"] == 0
        assert (await http.get("/info")).json()["pipelines"]["pipelines"] == []
    await viewer.close()


class Recording:
    """Test-only model: records a digest of every frame it is given. The synthetic source
    writes its frame number into each frame, so two equal digests mean one captured frame was
    processed twice (a processing per viewer, or a capture per viewer)."""

    name = "recording"

    def __init__(self) -> None:
        self.digests: list[str] = []

    def process(self, frame):
        self.digests.append(hashlib.sha1(np.ascontiguousarray(frame)).hexdigest())
        return frame, []


async def test_two_viewers_share_one_capture_and_one_processing(threads):
    async with running_server() as (url, svc):
        recording = Recording()
        svc.models.register("recording", "test", lambda: recording)
        a = await connect(url, model="recording")
        b = await connect(url, model="recording")
        fa, fb = await asyncio.gather(a.receive(45, keep_every=15), b.receive(45, keep_every=15))
        # both viewers stay attached while enough frames go through the model
        assert await wait_until(lambda: len(recording.digests) >= 60, 30), len(recording.digests)
        digests = list(recording.digests)
        repeats = len(digests) - len(set(digests))
        assert repeats == 0, f"{repeats} of {len(digests)} processed frames had been processed already"
        async with httpx.AsyncClient(base_url=url) as http:
            stats = (await http.get("/info")).json()["pipelines"]  # the counters as operators see them
        assert stats["captures_started"] == 1 and stats["pipelines_started"] == 1
        (cap,) = stats["captures"]
        (pipe,) = stats["pipelines"]
        assert cap["opens"] == 1 and pipe["viewers"] == 2 and pipe["model"] == "recording"
        names = threads.new()
        assert names.count("vg-cap-default") == 1 and names.count("vg-proc-default-recording") == 1, names
        await a.close()
        await b.close()
        assert await wait_until(lambda: svc.hub.stats()["pipelines"] == [], 15)
        assert await wait_until(lambda: threads.new() == ["vg-watchdog"], 10), threads.new()
    assert threads.new() == []


async def test_file_source_plays_at_output_rate_and_loops(media_dir):
    write_video(media_dir / "clip.mp4", frames=12, fps=10)  # 1.2 s of video at 10 fps
    async with running_server(MEDIA_DIR=media_dir) as (url, svc):
        viewer = await connect(url, video_path="clip.mp4")
        await viewer.receive(90, keep_every=90)
        # the output clock (step 3000), not the file's 10 fps (step 9000)
        assert output_step(viewer.pts[5:]) == TICK_30FPS, pts_steps(viewer.pts)
        (cap,) = svc.hub.stats()["captures"]
        assert cap["source"] == "file:clip.mp4" and cap["kind"] == "file"
        assert cap["frames_read"] > 12, "file did not loop"
        assert cap["opens"] == 1
        info = (await httpx.AsyncClient(base_url=url).get(f"/api/session/{viewer.session_id}")).json()
        assert info["source"] == "file:clip.mp4"
        await viewer.close()


async def test_offer_without_ice_is_reaped_after_connect_timeout():
    async with running_server(CONNECT_TIMEOUT=2) as (url, svc):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
            sid = r.json()["session_id"]
            assert (await http.get("/api/sessions")).json()["count"] == 1
            # never apply the answer: ICE never completes
            assert await wait_until(lambda: sid not in svc.sessions.sessions, 15)
            assert (await http.get(f"/api/session/{sid}")).status_code == 404
        assert svc.sessions.closed_reasons.get("connect-timeout") == 1
        # the session leaves the table first; its peer connection is closed after its pipeline
        assert await wait_until(lambda: svc.sessions.peer_connections == set(), 10)
        assert await wait_until(lambda: svc.hub.stats()["pipelines"] == [], 10)
        await pc.close()


async def test_vanished_peer_is_closed_from_rtcp_inactivity():
    # 2 s, not less: a live client sends RTCP every 0.5-1.5 s and the reaper looks once a second,
    # so 1 s would now and then close a live viewer.
    async with running_server(PEER_INACTIVITY_TIMEOUT=2) as (url, svc):
        viewer = await connect(url)
        await viewer.receive(10)
        assert svc.sessions.closed_reasons == {}
        viewer.vanish()  # its UDP sockets close: no BYE, no DTLS close
        t0 = time.monotonic()
        assert await wait_until(lambda: viewer.session_id not in svc.sessions.sessions, 40)
        gone_after = time.monotonic() - t0
        # The evidence: the reaper closed it ("peer-inactive"); ICE consent expiry (~30 s) closes
        # it as "closed" instead.
        assert svc.sessions.closed_reasons == {"peer-inactive": 1}, svc.sessions.closed_reasons
        # Guards a reaper that only fires near consent expiry (~30 s): 6 s is 5x below that,
        # and about twice what it takes here (2 s without packets + up to 2 reaper rounds).
        assert gone_after < 6, gone_after
        await viewer.close()


async def test_shutdown_with_live_sessions_leaves_nothing(threads):
    async with running_server() as (url, svc):
        viewers = [await connect(url), await connect(url, model="none")]
        await asyncio.gather(*(v.receive(10) for v in viewers))
        pcs = set(svc.sessions.peer_connections)
        assert len(pcs) == 2 and "vg-cap-default" in threads.new(), threads.new()
    assert threads.new() == []  # no thread this server started is left
    assert all(pc.connectionState == "closed" for pc in pcs)
    assert svc.sessions.sessions == {} and svc.sessions.peer_connections == set()
    for v in viewers:
        await v.close()


class Flaky:
    """A processor that raises on some frames and kills its thread once (fault injection)."""

    name = "flaky"
    calls = 0

    def process(self, frame):
        Flaky.calls += 1
        if Flaky.calls == 5:
            raise SystemExit("simulated thread death")
        if Flaky.calls % 3 == 0:
            raise ValueError("bad frame")
        return frame, []


async def test_faults_never_kill_the_pipeline_and_watchdog_restarts_threads():
    Flaky.calls = 0
    async with running_server() as (url, svc):
        svc.models.register("flaky", "test", Flaky)
        viewer = await connect(url, model="flaky")
        frames = await viewer.receive(90, keep_every=30)
        assert len(frames) == 3
        (pipe,) = [p for p in svc.hub._pipelines.values()]
        assert pipe.stage.worker.restarts >= 1
        assert pipe.stage.worker.errors >= 3
        assert "ValueError" in pipe.stats()["last_error"] or "thread died" in pipe.stats()["last_error"]
        assert pipe.stage.frames_processed > 20  # it kept processing after each fault
        await viewer.close()
