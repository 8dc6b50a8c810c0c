"""REST: every route, every error case, and the OpenAPI schema."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCConfiguration

from conftest import running_server, write_video

# Every test here runs in one event loop per module, so that most of them can share one server
# (`api`); each checks that it leaves nothing behind on it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def client_offer_sdp(direction: str = "recvonly", audio: bool = False, datachannel: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction=direction)
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    if datachannel:
        pc.createDataChannel("detections")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def counts(svc) -> tuple:
    stats = svc.hub.stats()
    return (len(svc.sessions.sessions), len(svc.sessions.peer_connections),
            len(stats["pipelines"]), len(stats["captures"]))


@pytest.fixture(scope="module")
def api_media(tmp_path_factory) -> Path:
    """MEDIA_DIR of the shared server, with the awkward entries the bad-offer table refers to."""
    root = tmp_path_factory.mktemp("api")
    media = root / "media"
    media.mkdir()
    (media / "sub").mkdir()
    (media / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    outside = root / "outside.mp4"
    write_video(outside, frames=3)
    (media / "escape.mp4").symlink_to(outside)
    return media


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(api_media):
    """One server for the module's tests that leave nothing behind."""
    # CONNECT_TIMEOUT: a session that never connects may be held open for a whole test
    async with running_server(MEDIA_DIR=api_media, CONNECT_TIMEOUT=120) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, svc


@pytest_asyncio.fixture(loop_scope="module")
async def full_api(media_dir):
    """A fresh server of its own for a test that fills it (MAX_SESSIONS=3)."""
    async with running_server(MEDIA_DIR=media_dir, MAX_SESSIONS=3) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, svc


async def test_root_health_info(api):
    http, _ = api
    root = (await http.get("/")).json()
    assert root["service"] == "VisionGuard" and root["status"] == "running"
    assert root["endpoints"]["api"]["offer"] == "/api/offer" and root["endpoints"]["docs"] == "/docs"

    health = (await http.get("/health")).json()
    assert health["status"] == "healthy" and health["video_available"] is True
    assert health["source"] == {"name": "default", "kind": "synthetic", "detail": "built-in synthetic pattern"}

    info = (await http.get("/info")).json()
    assert info["video"]["resolution"] == "640x480" and info["video"]["target_fps"] == 30
    assert info["webrtc"]["stun_servers"] == [] and info["webrtc"]["ice_host_addresses"] == ["127.0.0.1"]

    assert (await http.get("/api/health")).json() == {
        "status": "healthy", "active_connections": 0, "service": "WebRTC Signaling"}
    assert (await http.get("/api/sessions")).json() == {"active_sessions": [], "count": 0}


async def test_health_degraded_names_missing_video_file(media_dir):
    async with running_server(MEDIA_DIR=media_dir, VIDEO_FILE_PATH="nothere.mp4") as (url, _):
        async with httpx.AsyncClient(base_url=url) as http:
            health = (await http.get("/health")).json()
    assert health["status"] == "degraded" and health["source"]["kind"] == "synthetic"
    assert "nothere.mp4" in health["problems"][0]


async def test_video_file_path_inside_media_dir_is_the_default_source(media_dir):
    write_video(media_dir / "clip.mp4")
    async with running_server(MEDIA_DIR=media_dir, VIDEO_FILE_PATH="clip.mp4") as (url, _):
        async with httpx.AsyncClient(base_url=url) as http:
            health = (await http.get("/health")).json()
            info = (await http.get("/info")).json()
    assert health["status"] == "healthy" and health["source"]["kind"] == "file"
    assert health["source"]["detail"] == "clip.mp4" and info["video"]["exists"] is True


async def test_openapi_lists_every_route_with_models_and_examples(api):
    http, _ = api
    spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, method in [("/", "get"), ("/health", "get"), ("/info", "get"), ("/api/offer", "post"),
                         ("/api/sessions", "get"), ("/api/session/{session_id}", "get"),
                         ("/api/session/{session_id}", "delete"), ("/api/health", "get")]:
        op = paths[path][method]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert "$ref" in ok, (path, method)
    offer = paths["/api/offer"]["post"]
    assert offer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/OfferRequest")
    for code in ("400", "404", "413", "422", "503"):
        assert code in offer["responses"]
    schemas = spec["components"]["schemas"]
    for name in ("OfferRequest", "OfferResponse", "SessionsResponse", "SessionInfo", "CloseResponse",
                 "SignalingHealth", "ErrorResponse", "HealthResponse", "InfoResponse", "RootResponse"):
        assert schemas[name].get("examples"), name
    assert (await http.get("/docs")).status_code == 200
    assert (await http.get("/redoc")).status_code == 200


GOOD = "GOOD"  # placeholder replaced by a real client offer


@pytest.mark.parametrize("body,status,fragment", [
    ({"sdp": "", "type": "offer"}, 400, "v=0"),
    ({"sdp": "v=0", "type": "offer"}, 400, "m=video"),
    ({"sdp": "hello world", "type": "offer"}, 400, "v=0"),
    ({"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", "type": "offer"}, 400, "ICE"),
    ({"sdp": "v=0\r\nm=video notaport RTP 96\r\n", "type": "offer"}, 400, "parsed"),
    ({"sdp": GOOD, "type": "answer"}, 400, "offer"),
    ({"sdp": GOOD, "type": "offer", "video_path": "/etc/passwd"}, 400, "absolute"),
    ({"sdp": GOOD, "type": "offer", "video_path": "../secret.mp4"}, 400, ".."),
    ({"sdp": GOOD, "type": "offer", "video_path": "a/../../x.mp4"}, 400, ".."),
    ({"sdp": GOOD, "type": "offer", "video_path": "http://example.com/v.mp4"}, 400, "URL"),
    ({"sdp": GOOD, "type": "offer", "video_path": "rtsp://cam/stream"}, 400, "URL"),
    ({"sdp": GOOD, "type": "offer", "video_path": "file:clip.mp4"}, 400, "URL"),
    ({"sdp": GOOD, "type": "offer", "video_path": "clip\x00.mp4"}, 400, "NUL"),
    ({"sdp": GOOD, "type": "offer", "video_path": ""}, 400, "empty"),
    ({"sdp": GOOD, "type": "offer", "video_path": "escape.mp4"}, 400, "outside"),
    ({"sdp": GOOD, "type": "offer", "video_path": "sub"}, 400, "not a file"),
    ({"sdp": GOOD, "type": "offer", "video_path": "missing.mp4"}, 404, "not found"),
    ({"sdp": GOOD, "type": "offer", "video_path": "broken.mp4"}, 422, "broken.mp4"),
    ({"sdp": GOOD, "type": "offer", "video_path": "clip.mp4", "source": "default"}, 400, "not both"),
    ({"sdp": GOOD, "type": "offer", "source": ""}, 400, "empty"),
    ({"sdp": GOOD, "type": "offer", "source": "lobby"}, 404, "lobby"),
    ({"sdp": GOOD, "type": "offer", "model": "yolo9000"}, 400, "yolo9000"),
    ({"sdp": GOOD, "type": "offer", "model": "none", "source": "nope"}, 404, "nope"),
])
async def test_bad_offers_are_refused_and_leave_nothing(api, body, status, fragment):
    http, svc = api
    if body["sdp"] == GOOD:
        body = {**body, "sdp": await client_offer_sdp()}
    before = counts(svc)
    r = await http.post("/api/offer", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and fragment.lower() in detail.lower()
    assert counts(svc) == before == (0, 0, 0, 0)


async def test_schema_errors_are_422_with_json_detail(api):
    http, svc = api
    for kwargs in ({"content": b"not json", "headers": {"content-type": "application/json"}},
                   {"json": {"type": "offer"}}, {"json": {"sdp": "v=0"}}, {"json": ["x"]}):
        r = await http.post("/api/offer", **kwargs)
        assert r.status_code == 422 and "detail" in r.json()
    assert counts(svc) == (0, 0, 0, 0)


async def test_body_size_capped_413(api):
    http, svc = api
    big = {"sdp": "v=0" + "x" * 70000, "type": "offer"}
    r = await http.post("/api/offer", json=big)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]

    async def chunks():  # no Content-Length: the stream itself is counted
        for _ in range(20):
            yield b"x" * 8192
    r = await http.post("/api/offer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert counts(svc) == (0, 0, 0, 0)


async def test_camera_mode_offer_takes_no_source(api):
    http, svc = api
    for extra in ({"source": "default"}, {"video_path": "clip.mp4"}):
        r = await http.post("/api/offer", json={"sdp": await client_offer_sdp("sendrecv"), "type": "offer", **extra})
        assert r.status_code == 400 and "camera" in r.json()["detail"].lower()
    assert counts(svc) == (0, 0, 0, 0)


async def test_unknown_session_404(api):
    http, _ = api
    for r in (await http.get("/api/session/nope"), await http.delete("/api/session/nope")):
        assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await http.get("/no/such/route")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found", "code": "not_found"}


async def test_full_server_503_with_retry_after(full_api):
    http, svc = full_api
    ids = []
    for _ in range(3):  # MAX_SESSIONS=3 in this fixture
        r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(audio=True), "type": "offer"})
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "answer" and "m=audio" in r.json()["sdp"]
        assert "a=inactive" in r.json()["sdp"].split("m=audio")[1].split("m=")[0]
        ids.append(r.json()["session_id"])
    before = counts(svc)
    r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
    assert r.status_code == 503 and r.headers["retry-after"].isdigit() and r.json()["detail"]
    assert counts(svc) == before
    info = (await http.get(f"/api/session/{ids[0]}")).json()
    assert info["source"] == "default" and info["model"] == "none" and info["mode"] == "view"
    assert set(info) >= {"connection_state", "ice_connection_state", "ice_gathering_state", "signaling_state",
                         "created_at"}
    r = await http.delete(f"/api/session/{ids[0]}")
    assert r.json() == {"status": "success", "message": f"Session {ids[0]} closed", "active_connections": 2}
    r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
    assert r.status_code == 200


async def test_cors_preflight(api):
    http, _ = api
    r = await http.options("/api/offer", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "http://app.example")


async def test_mutated_real_offers_never_500_and_leave_nothing(api):
    """Drop or garble each line of a real browser-like offer: 200 or 400, never 5xx."""
    http, svc = api
    lines = (await client_offer_sdp(audio=True, datachannel=True)).split("\r\n")
    # One session held open throughout: the accepted offers below join its pipeline, so that
    # each DELETE does not stop and join its threads (most of this test's time otherwise).
    r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
    assert r.status_code == 200, r.text
    held = r.json()["session_id"]
    seen = set()
    for i, line in enumerate(lines):
        for variant in (lines[:i] + lines[i + 1:], lines[:i] + [line[:2] + "zz" + line[5:]] + lines[i + 1:]):
            r = await http.post("/api/offer", json={"sdp": "\r\n".join(variant), "type": "offer"})
            assert r.status_code in (200, 400), (line, r.status_code, r.text)
            assert isinstance(r.json().get("detail", ""), str)
            seen.add(r.status_code)
            if r.status_code == 200:
                assert (await http.delete(f"/api/session/{r.json()['session_id']}")).status_code == 200
    assert seen == {200, 400}
    assert counts(svc)[:2] == (1, 1)  # the held session only
    assert (await http.delete(f"/api/session/{held}")).status_code == 200
    assert counts(svc) == (0, 0, 0, 0)  # every accepted offer gave its pipeline back
