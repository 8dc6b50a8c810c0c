"""Named sources: RTSP cameras that come and go, files, devices, the sources API, credentials."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
import pytest

from conftest import ROOT, free_port, running_server, startup_error, write_video
from rtc_client import connect, pts_steps
from test_metrics import parse, value
from test_webrtc import wait_until

RTSP_FAST = {"RTSP_OPEN_TIMEOUT_S": 2, "RTSP_STALL_TIMEOUT_S": 2, "RTSP_RECONNECT_MAX_S": 1}


async def source(http: httpx.AsyncClient, name: str) -> dict:
    return {s["name"]: s for s in (await http.get("/api/sources")).json()["sources"]}[name]


class FrameWatch:
    """Keeps receiving a viewer's video in the background, recording pts and frames."""

    def __init__(self, track) -> None:
        self.track = track
        self.pts: list[int] = []  # 90 kHz, stamped by the server's output clock
        self.last: np.ndarray | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.track.recv()
            self.pts.append(frame.pts)
            if len(self.pts) % 5 == 0:
                self.last = frame.to_ndarray(format="bgr24")

    def longest_step_s(self) -> float:
        """The longest gap in the video, by the server's clock (not by the client's arrivals)."""
        return max(pts_steps(self.pts)) / 90000

    async def moving(self, timeout: float = 10) -> bool:
        """True once two frames ~0.3 s apart differ above the status band (live video)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a = self.last
            await asyncio.sleep(0.3)
            b = self.last
            if a is not None and b is not None and np.abs(a[:400].astype(int) - b[:400]).mean() > 1.0:
                return True
        return False


async def test_rtsp_viewer_survives_repeated_camera_outages(rtsp_server):
    sources = {"lobby": {"url": rtsp_server.url, "model": "none"}}
    async with running_server(SOURCES=sources, **RTSP_FAST) as (url, svc):
        viewer = await connect(url, source="lobby", detections=True)
        watch = FrameWatch(await viewer.track())
        async with httpx.AsyncClient(base_url=url) as http:
            assert await wait_until(lambda: len(viewer.messages) >= 10, 20)
            lobby = await source(http, "lobby")
            assert lobby["state"] == "live" and (lobby["width"], lobby["height"]) == (640, 480)
            assert lobby["url"] == f"rtsp://***@127.0.0.1:{rtsp_server.port}/cam" and lobby["viewers"] == 1

            for outage in range(3):
                await asyncio.to_thread(rtsp_server.kill)  # off the loop: the server shares it

                async def down():
                    return (await source(http, "lobby"))["state"] == "reconnecting"
                assert await wait_until(down, 15), f"outage {outage}: never noticed"
                health = (await http.get("/health")).json()
                assert health["status"] == "degraded" and "lobby" in " ".join(health["problems"])
                down_metrics = parse((await http.get("/metrics")).text)
                assert value(down_metrics, "visionguard_source_up", source="lobby") == 0
                assert value(down_metrics, "visionguard_source_running", source="lobby") == 1  # down, not idle
                assert value(down_metrics, "visionguard_source_reconnects_total", source="lobby") >= outage + 1
                stalled_at = viewer.messages[-1][1]["frame_id"]
                received_before = len(watch.pts)
                await asyncio.sleep(1.5)
                # while the camera is away: no fresh frames, but the viewer keeps its session and video
                assert viewer.messages[-1][1]["frame_id"] <= stalled_at + 1
                # ~45 frames in these 1.5 s at 30 fps, ~0 if the video stopped; 9 is 5x below 45
                during = watch.pts[received_before:]
                assert len(during) >= 9, f"video stopped during the outage ({len(during)} frames in 1.5 s)"
                session = (await http.get(f"/api/session/{viewer.session_id}")).json()
                assert session["connection_state"] == "connected"
                lobby = await source(http, "lobby")
                assert "s3cret" not in (lobby["last_error"] or "") and "s3cret" not in lobby["url"]

                await asyncio.to_thread(rtsp_server.start)
                resumed_from = viewer.messages[-1][1]["frame_id"]
                assert await wait_until(lambda: viewer.messages[-1][1]["frame_id"] > resumed_from + 5, 20), \
                    f"outage {outage}: no fresh frames after the camera came back"
                assert await watch.moving(), "the video did not move again"
                assert (await source(http, "lobby"))["state"] == "live"
                assert value(parse((await http.get("/metrics")).text), "visionguard_source_up", source="lobby") == 1
            capture = svc.hub.capture_for("lobby")
            assert capture.opens >= 4
            # How soon it comes back is the backoff, capped at RTSP_RECONNECT_MAX_S (1 s, jitter
            # ±20%): checked on the delays themselves rather than timed.
            assert capture.retry_delays and max(capture.retry_delays) <= 1.2 + 1e-9, capture.retry_delays
            # The video never froze for an outage (each is over 3 s: kill, notice, 1.5 s away,
            # restart), by the server's clock: 0.6 s is 5x below that (a normal step is 1/30 s).
            assert watch.longest_step_s() < 0.6, watch.longest_step_s()
        watch.task.cancel()
        await viewer.close()


async def test_sources_api_always_on_snapshot_and_errors(rtsp_server, media_dir, monkeypatch):
    write_video(media_dir / "clip.mp4", frames=20, fps=10)
    (media_dir / "corrupt.mp4").write_bytes(b"\x00" * 5000)
    sources = {
        "lobby": {"url": rtsp_server.url, "always_on": True, "model": "person"},
        "clip": {"url": "clip.mp4", "fps": 1},  # the file itself is 10 fps
        "desk": "device:7",
        "broken": "corrupt.mp4",
        "pattern": "synthetic",
    }
    async with running_server(MEDIA_DIR=media_dir, SOURCES=sources, SNAPSHOT_LINGER_S=0.5, **RTSP_FAST) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            listed = {s["name"]: s for s in (await http.get("/api/sources")).json()["sources"]}
            assert sorted(listed) == ["broken", "clip", "default", "desk", "lobby", "pattern"]
            assert listed["clip"]["state"] == "idle" and listed["clip"]["kind"] == "file"
            assert listed["clip"]["url"] == "clip.mp4" and listed["desk"]["url"] == "device:7"

            # always_on: live with no viewer at all
            assert await wait_until(lambda: svc.hub.capture_for("lobby").state == "live", 15)
            lobby = await source(http, "lobby")
            assert lobby["always_on"] and lobby["viewers"] == 0 and lobby["model"] == "person"

            r = await http.get("/api/sources/lobby/snapshot.jpg")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (480, 640, 3) and image.std() > 10

            # an idle file source is started for its snapshot, then stopped again (SNAPSHOT_LINGER_S later)
            r = await http.get("/api/sources/clip/snapshot.jpg")
            assert r.status_code == 200
            assert await wait_until(lambda: svc.hub.capture_for("clip") is None, 10)

            assert (await http.get("/api/sources/nope/snapshot.jpg")).status_code == 404

            # a camera that does not exist: the offer works, the viewer sees a placeholder, the
            # state says why
            viewer = await connect(url, source="desk")
            (_, frame), = await viewer.receive(15, keep_every=15)
            assert frame.shape == (480, 640, 3)
            desk = await source(http, "desk")
            assert desk["state"] == "failed" and "/dev/video7" in desk["last_error"]
            # a snapshot waits up to SNAPSHOT_WAIT_S (10 s) for a first frame, which this
            # source will never have
            import api.catalog

            monkeypatch.setattr(api.catalog, "SNAPSHOT_WAIT_S", 1.0)
            r = await http.get("/api/sources/desk/snapshot.jpg")
            assert r.status_code == 503 and "/dev/video7" in r.json()["detail"]

            broken = await connect(url, source="broken")
            await broken.receive(5)
            assert await wait_until(lambda: svc.hub.capture_for("broken").state == "failed", 10)
            assert "corrupt.mp4" in (await source(http, "broken"))["last_error"]
            assert (await http.get("/health")).json()["status"] == "degraded"

            # a configured file source plays at its fps setting (1), not the file's (10): 2 is 5x
            # below the failure, and pacing can only make it slower than 1
            clip = await connect(url, source="clip")
            await clip.receive(30)
            assert await wait_until(lambda: 0 < svc.hub.capture_for("clip").measured_fps < 2, 10)
            for v in (viewer, broken, clip):
                await v.close()


@pytest.mark.parametrize("value,fragment", [
    ('{"bad name!": "synthetic"}', "source name"),
    ('{"cam": "ftp://host/x"}', "scheme"),
    ('{"default": "synthetic"}', "default"),
    ('{"cam": {"url": "synthetic", "model": "nope"}}', "nope"),
    ('{"cam": "rtsp://admin:hunter2@cam/stream", "x": 5}', "SOURCES"),
])
def test_source_settings_are_checked_at_startup(monkeypatch, value, fragment):
    message = startup_error(monkeypatch, SOURCES=value)  # as JSON in the environment
    assert "SOURCES" in message and fragment in message, message
    assert "hunter2" not in message


def test_credentials_never_reach_the_log(rtsp_server, tmp_path):
    """A camera with a wrong password: FFmpeg's error names the URL; the log must not."""
    port = free_port()
    bad_url = rtsp_server.url.replace("s3cret", "wr0ngpass")
    env = {**os.environ, "SERVER_PORT": str(port), "SERVER_HOST": "127.0.0.1", "STUN_SERVERS": "[]",
           "ICE_HOST_ADDRESSES": '["127.0.0.1"]', "DEFAULT_MODEL": "none", "DEBUG_MODE": "true",
           "SOURCES": f'{{"lobby": {{"url": "{bad_url}", "always_on": true}}}}',
           "RTSP_RECONNECT_MAX_S": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            sources = None
            while time.monotonic() < deadline:
                try:
                    sources = httpx.get(f"http://127.0.0.1:{port}/api/sources", timeout=2).json()["sources"]
                    lobby = {s["name"]: s for s in sources}["lobby"]
                    if lobby["last_error"] and log.read_text().count("lobby") >= 2:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            assert lobby["state"] == "failed" and "401" in lobby["last_error"]
            assert "***" in lobby["last_error"] and "wr0ngpass" not in lobby["last_error"]
            info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=5).text
            assert "wr0ngpass" not in info
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    assert "rtsp://***@127.0.0.1" in text
    assert "wr0ngpass" not in text


async def test_ice_servers_route_is_the_only_place_with_turn_credentials():
    turn = [{"urls": "turn:turn.example.com:3478", "username": "alice", "credential": "t0ps3cret"}]
    async with running_server(STUN_SERVERS=["stun:stun.example.com:3478"], TURN_SERVERS=turn) as (url, svc):
        async with httpx.AsyncClient(base_url=url) as http:
            ice = (await http.get("/api/ice-servers")).json()
            assert ice == {"iceServers": [{"urls": "stun:stun.example.com:3478"}, turn[0]]}
            for route in ("/info", "/health", "/api/sources", "/api/models", "/openapi.json"):
                assert "t0ps3cret" not in (await http.get(route)).text, route


async def test_stalled_stream_is_detected_and_recovers(rtsp_server):
    """The camera keeps its TCP connection open but sends nothing (process stopped)."""
    import signal

    async with running_server(SOURCES={"lobby": {"url": rtsp_server.url, "model": "none"}}, **RTSP_FAST) as (url, svc):
        viewer = await connect(url, source="lobby", detections=True)
        await viewer.receive(10)
        assert await wait_until(lambda: len(viewer.messages) >= 10, 20)
        capture = svc.hub.capture_for("lobby")
        os.kill(rtsp_server.proc.pid, signal.SIGSTOP)
        try:
            assert await wait_until(lambda: capture.state == "reconnecting", 15), capture.state
        finally:
            os.kill(rtsp_server.proc.pid, signal.SIGCONT)
        before = viewer.messages[-1][1]["frame_id"]
        assert await wait_until(lambda: viewer.messages[-1][1]["frame_id"] > before + 5, 30)
        assert capture.state == "live"
        await viewer.close()
