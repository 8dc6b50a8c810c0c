"""WebRTC end to end with a real aiortc client over loopback (no STUN)."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from conftest import running_server, vg_threads, write_video
from rtc_client import connect, track_ended


async def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return True
        await asyncio.sleep(interval)
    return False


def frame_rate(frames: list[tuple[float, np.ndarray]], n_received: int) -> float:
    return (n_received - 1) / (frames[-1][0] - frames[0][0])


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
    assert "Starting AI Video Streaming Backend v1.0.0" in banner and "synthetic source" in banner
    assert "CORS: Allowing all origins" in banner and "/demo" in banner

    viewer = await connect(url)
    n = 75
    t0 = time.monotonic()
    frames = await viewer.receive(n, keep_every=1)
    elapsed = time.monotonic() - t0
    assert len(frames) == n
    first = frames[0][1]
    assert first.shape == (480, 640, 3)
    last = frames[-1][1]
    assert last.std() > 20, "frame looks blank"
    assert not np.array_equal(frames[10][1], last), "video does not move"
    # ~30 fps expected; wide margins for a shared, noisy box
    rate = frame_rate(frames[5:], n - 5)
    assert 15 < rate < 45, (rate, elapsed)

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


async def test_two_viewers_share_one_capture_and_one_processing():
    async with running_server() as (url, svc):
        a = await connect(url)
        b = await connect(url)
        fa, fb = await asyncio.gather(a.receive(45, keep_every=15), b.receive(45, keep_every=15))
        async with httpx.AsyncClient(base_url=url) as http:
            stats = (await http.get("/info")).json()["pipelines"]  # the counters as operators see them
        assert stats["captures_started"] == 1 and stats["pipelines_started"] == 1
        (cap,) = stats["captures"]
        (pipe,) = stats["pipelines"]
        assert cap["opens"] == 1 and pipe["viewers"] == 2
        # each captured frame is processed at most once, whatever the number of viewers
        assert pipe["frames_processed"] <= cap["frames_read"]
        assert pipe["frames_processed"] >= 30
        names = vg_threads()
        assert names.count("vg-cap-default") == 1 and names.count("vg-proc-default-none") == 1
        await a.close()
        await b.close()
        assert await wait_until(lambda: svc.hub.stats()["pipelines"] == [], 15)
        assert await wait_until(lambda: not [n for n in vg_threads() if n != "vg-watchdog"], 10), vg_threads()


async def test_file_source_plays_at_output_rate_and_loops(media_dir):
    write_video(media_dir / "clip.mp4", frames=12, fps=10)  # 1.2 s of video at 10 fps
    async with running_server(MEDIA_DIR=media_dir) as (url, svc):
        viewer = await connect(url, video_path="clip.mp4")
        n = 90
        frames = await viewer.receive(n, keep_every=1)
        rate = frame_rate(frames[5:], n - 5)
        assert 15 < rate < 45, rate  # the output clock, not the file's 10 fps
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
        assert svc.sessions.peer_connections == set()
        assert await wait_until(lambda: svc.hub.stats()["pipelines"] == [], 10)
        await pc.close()


async def test_vanished_peer_is_closed_from_rtcp_inactivity():
    async with running_server(PEER_INACTIVITY_TIMEOUT=3) as (url, svc):
        viewer = await connect(url)
        await viewer.receive(10)
        # The client disappears without a word: its UDP sockets close, no BYE, no DTLS close.
        ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
        for protocol in ice._connection._protocols:
            protocol.transport.close()
        t0 = time.monotonic()
        assert await wait_until(lambda: viewer.session_id not in svc.sessions.sessions, 20)
        gone_after = time.monotonic() - t0
        assert svc.sessions.closed_reasons.get("peer-inactive") == 1, svc.sessions.closed_reasons
        assert gone_after < 15  # well before ICE consent expiry (~30 s)
        await viewer.close()


async def test_shutdown_with_live_sessions_leaves_nothing():
    async with running_server() as (url, svc):
        viewers = [await connect(url), await connect(url, model="none")]
        await asyncio.gather(*(v.receive(10) for v in viewers))
        pcs = set(svc.sessions.peer_connections)
        assert len(pcs) == 2 and any(n.startswith("vg-cap") for n in vg_threads())
    assert vg_threads() == []
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
