"""Recordings end to end, with real files and real decoders: a recording of vtest.avi plays at
real speed with the overlay, Range downloads, a SIGKILL mid-recording, encode once (the viewer's
H.264 and the recorded samples are the same bytes), retention, and a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from conftest import ROOT, free_port, running_server, vtest_frames
from marked_frames import MarkedCamera, read_mark
from recording import RecordingStore, probe
from rtc_client import EncodedLog, connect
from test_run import base_env, wait_http
from test_webrtc import wait_until


async def recordings(http: httpx.AsyncClient, **params) -> list[dict]:
    r = await http.get("/api/recordings", params=params)
    assert r.status_code == 200, r.text
    return r.json()["recordings"]


async def one(http: httpx.AsyncClient, recording_id: str) -> dict:
    return {r["recording_id"]: r for r in await recordings(http)}.get(recording_id, {})


async def test_a_recording_of_vtest_plays_at_real_speed_with_the_overlay_and_serves_ranges(vtest, tmp_path):
    fps = 15
    async with running_server(MEDIA_DIR=vtest.parent, RECORDINGS_DIR=tmp_path, TARGET_FPS=fps,
                              SOURCES={"street": {"url": "vtest.avi", "always_on": True}}) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async def live():
                states = {s["name"]: s["state"] for s in (await http.get("/api/sources")).json()["sources"]}
                return states["street"] == "live" and svc.hub.pipelines_for("street")[0].latest_image() is not None
            assert await wait_until(live, 20)
            r = await http.post("/api/sources/street/record")
            t0 = time.monotonic()
            assert r.status_code == 201, r.text
            started = r.json()
            assert started["state"] == "recording" and started["source"] == "street"
            rid = started["recording_id"]
            assert len(rid) == 32
            assert (await http.post("/api/sources/street/record")).json()["code"] == "already_recording"
            await asyncio.sleep(6.0)
            r = await http.delete("/api/sources/street/record")
            wall = time.monotonic() - t0
            assert r.status_code == 200, r.text
            stopped = r.json()
            assert stopped["recording_id"] == rid and stopped["state"] == "done"
            listed = await one(http, rid)
            assert listed["state"] == "done" and listed["trigger"] == "manual" and listed["error"] is None
            assert listed["bytes"] == stopped["bytes"] > 0 and listed["download_url"] == f"/api/recordings/{rid}"
            assert [x["recording_id"] for x in await recordings(http, source="street")] == [rid]
            assert await recordings(http, source="default") == []
            path = tmp_path / f"{rid}.mp4"
            data = path.read_bytes()
            assert len(data) == stopped["bytes"]

            # Range
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": "bytes=1000-1999"})
            assert r.status_code == 206 and r.content == data[1000:2000]
            assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
            assert r.headers["accept-ranges"] == "bytes" and r.headers["content-type"] == "video/mp4"
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": "bytes=-500"})
            assert r.status_code == 206 and r.content == data[-500:]
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": f"bytes={len(data) - 10}-"})
            assert r.status_code == 206 and r.content == data[-10:]
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": f"bytes={len(data)}-"})
            assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
            assert r.json()["code"] == "range_not_satisfiable"
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": "BYTES = 1000 - 1999"})  # RFC 9110
            assert r.status_code == 206 and r.content == data[1000:2000]
            r = await http.get(f"/api/recordings/{rid}", headers={"Range": "bytes=-0"})
            assert r.status_code == 416
            for ignored in ("bytes=" + "9" * 5000 + "-", "bytes=5-2", "bytes=0-0,5-9", "pages=0-9"):
                r = await http.get(f"/api/recordings/{rid}", headers={"Range": ignored})
                assert r.status_code == 200 and len(r.content) == len(data), ignored[:20]
            r = await http.get(f"/api/recordings/{rid}")
            assert r.status_code == 200 and r.content == data and r.headers["accept-ranges"] == "bytes"

            m = (await http.get("/metrics")).text
            assert f'visionguard_recording_bytes_total{{source="street"}} {float(len(data))}' in m
            assert 'visionguard_recording_dropped_frames_total{source="street"} 0.0' in m

    # the file: real duration, real frame rate, every frame decodes, the overlay is in it
    duration, frames = probe(path)
    assert abs(duration - 6.0) <= 1.0 and abs(duration - wall) <= 1.0, (duration, wall)
    assert abs(duration - stopped["duration_s"]) < 0.01
    assert frames >= 0.85 * duration * fps and frames <= duration * fps + 1, (frames, duration)
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
        assert all(p.dts == p.pts for p in packets), "dts = pts (no B-frames)"
        assert packets[0].is_keyframe and any(p.is_keyframe for p in packets[1:])  # flags kept
        assert all(b.pts > a.pts for a, b in zip(packets, packets[1:]))
    with av.open(str(path)) as c:
        images = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(images) == frames and images[0].shape == (480, 640, 3)
    first = images[0].astype(np.float32)
    raw = [f.astype(np.float32) for f in vtest_frames(vtest, 200)]
    body, band = slice(0, 420), slice(454, 480)  # the status band: the bottom 26 rows at 480
    best = min(raw, key=lambda f: np.abs(f[body] - first[body]).mean())
    body_diff = np.abs(best[body] - first[body]).mean()
    assert body_diff < 8, "the recording shows the source's video"
    band_diff = np.abs(best[band] - first[band]).mean()
    assert band_diff > max(12.0, 3 * body_diff), ("the bottom band is the overlay, not the raw video", band_diff)
    assert first[band].mean() < 0.8 * best[band].mean()  # darkened


async def test_a_file_cut_by_sigkill_plays_to_its_last_fragment_and_is_listed_after_restart(vtest, tmp_path):
    port = free_port()
    env = {**base_env(port), "MEDIA_DIR": str(vtest.parent), "VIDEO_FILE_PATH": "vtest.avi", "TARGET_FPS": "15",
           "RECORDINGS_DIR": str(tmp_path), "EVENTS_FILE": ""}
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            r = await http.post("/api/sources/default/record")
            t0 = time.monotonic()
            assert r.status_code == 201, r.text
            rid = r.json()["recording_id"]
            await asyncio.sleep(4.5)
        proc.kill()  # SIGKILL: no shutdown, no trailer, the sidecar still says "recording"
        killed = time.monotonic() - t0
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    path = tmp_path / f"{rid}.mp4"
    duration, frames = probe(path)
    # within one fragment (1 s) of the kill, plus the first keyframe's wait on a slow box
    assert killed - 2.0 <= duration <= killed + 0.5, (duration, killed)
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == frames > 0
    async with running_server(RECORDINGS_DIR=tmp_path) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            listed = await one(http, rid)
            assert listed["state"] == "done" and listed["duration_s"] == pytest.approx(duration, abs=0.01)
            assert listed["bytes"] == path.stat().st_size and listed["ended_at"] is not None
            assert (await http.get(f"/api/recordings/{rid}")).content == path.read_bytes()


def nal_units(data: bytes, avcc: bool) -> tuple[bytes, ...]:
    """The NAL units of one frame: length-prefixed (MP4 samples) or Annex B (RTP depacketised)."""
    out = []
    if avcc:
        i = 0
        while i + 4 <= len(data):
            n = int.from_bytes(data[i:i + 4], "big")
            out.append(data[i + 4:i + 4 + n])
            i += 4 + n
    else:
        for part in data.split(b"\x00\x00\x01")[1:]:
            out.append(part)
        out = [p.rstrip(b"\x00") for p in out]  # a 4-byte start code's leading zero
    return tuple(p.rstrip(b"\x00") for p in out if p)


def frame_hash(units: tuple[bytes, ...]) -> str:
    return hashlib.sha1(b"|".join(units)).hexdigest()


async def record_session(http: httpx.AsyncClient, viewer, frames: int, while_recording=None) -> tuple[str, dict]:
    """Record `viewer`'s session while it receives `frames`; (recording id, the stop answer)."""
    r = await http.post(f"/api/record/{viewer.session_id}")
    assert r.status_code == 201, r.text
    await viewer.receive(frames)
    if while_recording is not None:
        await while_recording()
    stopped = await http.delete(f"/api/record/{viewer.session_id}")
    assert stopped.status_code == 200, stopped.text
    return r.json()["recording_id"], stopped.json()


async def test_encode_once_a_session_recording_holds_the_bytes_its_h264_viewer_got(monkeypatch, tmp_path):
    log = EncodedLog().install(monkeypatch)
    async with running_server(RECORDINGS_DIR=tmp_path) as (url, svc):
        viewer = await connect(url, codec="h264")
        await viewer.receive(10)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async def encoders() -> None:
                (pipe,) = (await http.get("/info")).json()["pipelines"]["pipelines"]
                assert [e["codec"] for e in pipe["encoders"]] == ["h264"], pipe["encoders"]  # one encode for both
            rid, stopped = await record_session(http, viewer, 100, while_recording=encoders)
            assert stopped["recording_id"] == rid
            assert (await one(http, rid))["trigger"] == "session"
            received = log.of(viewer)
            # a recording of a session ends with the session
            rid2 = (await http.post(f"/api/record/{viewer.session_id}")).json()["recording_id"]
            await viewer.receive(15)
            await viewer.close()
            async def ended():
                return (await one(http, rid2)).get("state") == "done"
            assert await wait_until(ended, 15)
    with av.open(str(tmp_path / f"{rid}.mp4")) as c:
        recorded = {p.pts: frame_hash(nal_units(bytes(p), avcc=True)) for p in c.demux(video=0) if p.size}
    got = [(ts, frame_hash(nal_units(data, avcc=False))) for _, ts, data in received]
    by_hash = {h: pts for pts, h in recorded.items()}
    offsets = {(ts - by_hash[h]) % 2**32 for ts, h in got if h in by_hash}
    assert len(offsets) == 1, f"one timeline offset, got {len(offsets)}"
    offset = offsets.pop()
    both = [(ts, h) for ts, h in got if (ts - offset) % 2**32 in recorded]
    assert len(both) >= 60, len(both)
    assert all(recorded[(ts - offset) % 2**32] == h for ts, h in both), "same pts, same bytes"


async def test_a_camera_mode_session_records_its_own_camera_processed(tmp_path):
    async with running_server(RECORDINGS_DIR=tmp_path) as (url, svc):
        camera = MarkedCamera()
        viewer = await connect(url, send_track=camera)
        await viewer.receive(10)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            rid, stopped = await record_session(http, viewer, 45)
            assert stopped["state"] == "done", stopped
            assert (await one(http, rid))["trigger"] == "session"
        await viewer.close()
    with av.open(str(tmp_path / f"{rid}.mp4")) as c:
        marks = [read_mark(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]
    found = [m for m in marks if m is not None]
    assert len(found) >= 20 and set(found) <= set(camera.sent), (len(marks), found[:5])  # the client's own frames


async def test_retention_deletes_the_oldest_finished_and_never_the_current(tmp_path, monkeypatch):
    import api.recording_control as control

    monkeypatch.setattr(control, "RETENTION_S", 0.3)
    seeded = RecordingStore(tmp_path)
    ids = []
    for age_h in (200, 3, 2, 1):
        info = seeded.create("default", "manual", started_at=time.time() - age_h * 3600)
        info.state, info.bytes, info.ended_at, info.duration_s = "done", 100, info.started_at + 10, 10.0
        seeded.save(info)
        (tmp_path / f"{info.recording_id}.mp4").write_bytes(b"\x00" * 100)
        ids.append(info.recording_id)
    async with running_server(RECORDINGS_DIR=tmp_path, RECORDINGS_MAX_BYTES=250) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async def kept():
                return [r["recording_id"] for r in await recordings(http)]
            async def settled():
                return await kept() == [ids[3], ids[2]]  # too old (200 h) and the oldest beyond 250 bytes: gone
            assert await wait_until(settled, 10), await kept()
            assert not (tmp_path / f"{ids[0]}.mp4").exists() and not (tmp_path / f"{ids[1]}.json").exists()
            current = (await http.post("/api/sources/default/record")).json()["recording_id"]
            async def only_current():
                return await kept() == [current]
            assert await wait_until(only_current, 15), await kept()  # it outgrew the limit alone: it stays
            assert (await one(http, current))["state"] == "recording"
            assert (tmp_path / f"{current}.mp4").stat().st_size > 250
            r = await http.delete(f"/api/recordings/{current}")
            assert r.status_code == 409 and r.json()["code"] == "still_recording"
            await http.delete("/api/sources/default/record")
            async def gone():
                return await kept() == []
            assert await wait_until(gone, 10)  # finished, and over the limit: next
            assert sorted(p.name for p in tmp_path.iterdir()) == []


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "512k"):
    """A tmpfs of `size` at `path`; yields False if mounting is not permitted here (or
    VG_TEST_NO_MOUNT=1, to try the fallback)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and not os.environ.get("VG_TEST_NO_MOUNT"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


async def disk_full_scenario(url: str, errors: tuple[str, ...], folder: Path) -> None:
    viewer = await connect(url)
    await viewer.receive(5)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/api/sources/default/record")
        assert r.status_code == 201, r.text
        rid = r.json()["recording_id"]

        async def failed():
            return (await one(http, rid)).get("state") == "failed"
        assert await wait_until(failed, 40), await one(http, rid)
        listed = await one(http, rid)
        assert any(e in listed["error"] for e in errors), listed["error"]
        assert listed["error"].startswith("Cannot write the recording: ")
        try:  # what is listed is what the kept file plays (its last fragment may be cut)
            plays = probe(folder / f"{rid}.mp4")
        except Exception:
            plays = (0.0, 0)
        assert (listed["duration_s"], listed["frames"]) == (round(plays[0], 3), plays[1]), (listed, plays)
        await viewer.receive(20, timeout=20)  # the stream goes on
        assert (await http.get("/health")).status_code == 200
        r = await http.delete("/api/sources/default/record")  # it has ended (or is being cleaned up)
        assert (r.status_code == 404 and r.json()["code"] == "not_recording") or \
            (r.status_code == 200 and r.json()["state"] == "failed" and r.json()["error"] == listed["error"])
    await viewer.close()


async def test_a_full_disk_fails_the_recording_and_the_stream_goes_on(vtest, tmp_path):
    settings = {"MEDIA_DIR": str(vtest.parent), "VIDEO_FILE_PATH": "vtest.avi", "VIDEO_BITRATE": "3000000"}
    with tiny_disk(tmp_path / "disk") as mounted:
        if mounted:
            async with running_server(RECORDINGS_DIR=tmp_path / "disk", **settings) as (url, svc):
                await disk_full_scenario(url, ("No space left on device",), tmp_path / "disk")
            return
        # no mount allowed: a server process whose files may not grow past 512 KiB (EFBIG)
        port = free_port()
        env = {**base_env(port), **settings, "RECORDINGS_DIR": str(tmp_path / "disk"), "EVENTS_FILE": ""}

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))

        proc = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            await disk_full_scenario(f"http://127.0.0.1:{port}", ("File too large", "No space left on device"),
                                     tmp_path / "disk")
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


async def test_a_source_configured_with_record_is_recorded_from_start_up_and_after_a_restart(tmp_path):
    settings = {"RECORDINGS_DIR": tmp_path, "SOURCES": {"lobby": {"url": "synthetic", "record": True}}}
    async with running_server(**settings) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            (first,) = await recordings(http)
            assert first["source"] == "lobby" and first["trigger"] == "continuous" and first["state"] == "recording"
            assert (await http.post("/api/sources/lobby/record")).status_code == 409

            def has_frames(rid):
                async def check():
                    return (await one(http, rid)).get("frames", 0) > 0
                return check
            assert await wait_until(has_frames(first["recording_id"]), 15)
            assert (await http.delete("/api/sources/lobby/record")).json()["recording_id"] == first["recording_id"]
            await asyncio.sleep(1.2)  # an admin's stop pauses it: the supervisor does not restart it
            assert [r["state"] for r in await recordings(http)] == ["done"]
            again = (await http.post("/api/sources/lobby/record")).json()
            assert (await one(http, again["recording_id"]))["trigger"] == "continuous"
            assert await wait_until(has_frames(again["recording_id"]), 15)
    async with running_server(**settings) as (url, svc):  # resumes after a restart, in a new file
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            listed = await recordings(http)
            assert [r["state"] for r in listed] == ["recording", "done", "done"]
            assert listed[0]["recording_id"] not in (first["recording_id"], again["recording_id"])
