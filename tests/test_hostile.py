"""Hostile input: every request below is refused with a 4xx and a JSON `{detail, code}`, leaves
nothing behind, and a viewer streaming at the same time keeps receiving frames. Hostile files
given to a source directly: test_hostile_files.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import running_server, write_video
from rtc_client import connect
from test_api import client_offer_sdp, counts

LONG = "Q" * 5000


# -- helpers ----------------------------------------------------------------------
async def post_raw(http: httpx.AsyncClient, content, content_type: str | None = "application/json"):
    headers = {"content-type": content_type} if content_type else {}
    return await http.post("/api/offer", content=content, headers=headers)


async def post_offer(http: httpx.AsyncClient, **fields):
    """JSON with every non-ASCII character escaped, so lone surrogates travel as `\\ud800`."""
    return await post_raw(http, json.dumps(fields).encode())


def assert_refused(r: httpx.Response, statuses=(400, 404, 413, 422), what="") -> None:
    assert r.status_code in statuses, (what, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"detail", "code"}, (what, body)
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", body["code"]), (what, body)
    if isinstance(body["detail"], str):  # a sentence, short whatever was sent
        assert body["detail"] and len(body["detail"]) <= 600, (what, body)
    else:  # FastAPI's list for a body that does not fit the schema
        assert r.status_code == 422 and isinstance(body["detail"], list), (what, body)
    assert len(r.content) < 20000, (what, len(r.content))


class Viewer:
    """A viewer streaming the default source through the barrage."""

    async def start(self, url: str) -> "Viewer":
        self.viewer = await connect(url)
        await self.viewer.receive(3, timeout=60)
        return self

    async def still_streaming(self) -> None:
        frames = await self.viewer.receive(10, timeout=60)
        assert len(frames) == 10 and frames[-1][1].shape == (480, 640, 3)

    async def close(self) -> None:
        await self.viewer.close()


@pytest.fixture
async def server(media_dir):
    """A server with one viewer streaming; `before` is what it holds with that viewer alone."""
    async with running_server(MEDIA_DIR=media_dir, MAX_SESSIONS=21) as (url, svc):
        viewer = await Viewer().start(url)
        before = counts(svc)
        assert before == (1, 1, 1, 1)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            yield http, svc, viewer, before
        await viewer.close()


# -- names: video_path, source, model ------------------------------------------------
HOSTILE_NAMES = [
    "../secret.mp4", "a/../../secret.mp4", "../../../../../../etc/passwd",
    "..%2fsecret.mp4", "%2e%2e%2fsecret.mp4", "%2e%2e/secret.mp4", "..%252fsecret.mp4", "%252e%252e%252fetc%252fpasswd",
    "..%c0%afsecret.mp4", "\uff0e\uff0e/secret.mp4",
    "/etc/passwd", "//etc/passwd", "/dev/zero", "/proc/self/environ",
    "file:/etc/passwd", "file:///etc/passwd", "FILE://localhost/etc/passwd", "file:clip.mp4",
    "rtsp://10.0.0.1:554/stream", "rtsp://user:pass@10.0.0.1/cam", "http://169.254.169.254/latest/meta-data/",
    "https://example.com/v.mp4", "concat:clip.mp4|clip.mp4", "subfile,,start,0,end,100,,:clip.mp4", "data:,hello",
    "pipe:0", "device:0", "synthetic",
    "clip.mp4\x00.txt", "\x00", "clip.mp4%00.txt", "%00",
    "..\\secret.mp4", "..\\..\\..\\etc\\passwd", "C:\\Windows\\win.ini", "C:clip.mp4", "\\\\server\\share\\clip.mp4",
    LONG, "sub/" + "b" * 300 + ".mp4", "x/" * 2000 + "clip.mp4", "a\ud800.mp4", "\udcff", "\ud83d",
    " ", "\t\n", "clip.mp4\r\nX-Injected: 1", "\u202eclip.mp4", "*", "?",
]


async def test_hostile_names_in_video_path_source_and_model(server, media_dir, tmp_path):
    http, svc, viewer, before = server
    write_video(tmp_path / "secret.mp4", frames=3)
    sdp = await client_offer_sdp()
    for name in HOSTILE_NAMES:
        for field in ("video_path", "source", "model"):
            r = await post_offer(http, sdp=sdp, type="offer", **{field: name})
            assert_refused(r, (400, 404, 422), f"{field}={ascii(name[:60])}")
            assert counts(svc) == before, (field, ascii(name[:60]))
    await viewer.still_streaming()
    assert counts(svc) == before


# -- point 1: these reached a 500 ------------------------------------------------------
async def test_long_names_nan_and_lone_surrogates_are_4xx_and_logged_short(server, caplog):
    http, svc, viewer, before = server
    sdp = await client_offer_sdp()
    cases = [{"video_path": LONG}, {"video_path": "a\ud800.mp4"}, {"video_path": "\ud800"},
             {"video_path": "e" * 300 + ".mp4"}]
    for fields in cases:
        r = await post_offer(http, sdp=sdp, type="offer", **fields)
        assert_refused(r, (400,), ascii(fields)[:80])
        assert r.json()["code"] == "bad_offer"
    raw = json.dumps(sdp)
    for field in ("sdp", "type", "video_path", "source", "model"):
        for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
            body = {"sdp": raw, "type": '"offer"', field: number}
            text = "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"
            r = await post_raw(http, text)
            assert r.status_code == 422, (field, number, r.status_code, r.text[:300])
            assert_refused(r, (422,), f"{field}={number}")
            (error,) = r.json()["detail"]
            assert error["loc"] == ["body", field] and isinstance(error["input"], str)
    for field in ("sdp", "type", "video_path", "source", "model"):  # a surrogate where a string is wrong
        r = await post_offer(http, **{"sdp": sdp, "type": "offer", field: ["\ud800" + LONG]})
        assert_refused(r, (422,), field)
    assert counts(svc) == before
    for record in caplog.records:
        text = record.getMessage() + "\n" + (record.exc_text or "")
        for line in text.split("\n"):
            assert len(line) <= 500, line[:200]
        assert "Traceback" not in text and record.levelno < logging.ERROR, text[:500]
    await viewer.still_streaming()


def test_log_lines_are_clipped_and_encodable():
    from core.redact import RedactingFilter, clip

    assert clip("short") == "short"
    clipped = clip("a" * 5000 + "tail.mp4", 200)
    assert len(clipped) < 240 and clipped.endswith("tail.mp4") and "characters cut" in clipped
    assert clip("a\ud800b") == "a\\ud800b"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "opening %s failed", ("a" * 5000,), None)
    try:
        raise OSError(36, "File name too long", "/media/" + "a" * 5000)
    except OSError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    for line in (record.getMessage() + "\n" + record.exc_text).split("\n"):
        assert len(line) <= 400
    assert "File name too long" in record.exc_text


# -- files inside MEDIA_DIR -------------------------------------------------------------
def hostile_files(media_dir: Path, outside: Path) -> dict[str, tuple[int, str]]:
    """Files a client may name; what each must get: (status, a word of the detail)."""
    files: dict[str, tuple[int, str]] = {}
    (media_dir / "escape.mp4").symlink_to(outside)
    files["escape.mp4"] = (400, "outside")
    (media_dir / "zero.mp4").symlink_to("/dev/zero")
    files["zero.mp4"] = (400, "outside")
    (media_dir / "environ.mp4").symlink_to("/proc/self/environ")
    files["environ.mp4"] = (400, "outside")
    os.mkfifo(media_dir / "fifo.mp4")
    files["fifo.mp4"] = (400, "not a file")
    (media_dir / "fifolink.mp4").symlink_to(media_dir / "fifo.mp4")
    files["fifolink.mp4"] = (400, "not a file")
    try:  # a device node inside MEDIA_DIR (needs CAP_MKNOD)
        os.mknod(media_dir / "null.mp4", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        files["null.mp4"] = (400, "not a file")
    except (PermissionError, OSError):
        pass
    (media_dir / "dir.mp4").mkdir()
    files["dir.mp4"] = (400, "not a file")
    (media_dir / "loop1.mp4").symlink_to(media_dir / "loop2.mp4")
    (media_dir / "loop2.mp4").symlink_to(media_dir / "loop1.mp4")
    files["loop1.mp4"] = (400, "loop1.mp4")
    with open(media_dir / "huge.mp4", "wb") as f:  # 64 GiB of nothing, sparse
        f.truncate(64 << 30)
    files["huge.mp4"] = (422, "huge.mp4")
    (media_dir / "text.mp4").write_text("This is not a video.\n" * 100)
    files["text.mp4"] = (422, "text.mp4")
    (media_dir / "empty.mp4").write_bytes(b"")
    files["empty.mp4"] = (422, "empty.mp4")
    for name, entry in (("abs.m3u8", str(outside)), ("url.m3u8", f"file://{outside}"),
                        ("relative.m3u8", "inside.mp4"), ("playlist.mp4", str(outside))):
        (media_dir / name).write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{entry}\n#EXT-X-ENDLIST\n")
        files[name] = (422, name)
    (media_dir / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{outside}'\n")
    files["list.ffconcat"] = (422, "list.ffconcat")
    (media_dir / "list.txt").write_text("ffconcat version 1.0\nfile 'inside.mp4'\n")
    files["list.txt"] = (422, "list.txt")
    return files


async def test_hostile_files_inside_media_dir(server, media_dir, tmp_path):
    http, svc, viewer, before = server
    outside = write_video(tmp_path / "outside.mp4", frames=5)
    write_video(media_dir / "inside.mp4", frames=5)
    sdp = await client_offer_sdp()
    for name, (status, fragment) in hostile_files(media_dir, outside).items():
        started = time.monotonic()
        r = await asyncio.wait_for(post_offer(http, sdp=sdp, type="offer", video_path=name), 60)
        assert_refused(r, (status,), name)
        assert fragment.lower() in r.json()["detail"].lower(), (name, r.text)
        assert counts(svc) == before, name
        assert time.monotonic() - started < 30, name  # generous: a probe never hangs
    r = await post_offer(http, sdp=sdp, type="offer", video_path="inside.mp4")  # a plain file still plays
    assert r.status_code == 200, r.text
    assert (await http.delete(f"/api/session/{r.json()['session_id']}")).status_code == 200
    await viewer.still_streaming()
    assert counts(svc)[:2] == before[:2]


# -- SDP ------------------------------------------------------------------------------------
def with_candidates(sdp: str, n: int) -> str:
    lines = "".join(f"a=candidate:{i} 1 udp {2130706431 - i} 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256} "
                    f"{1024 + i % 60000} typ host\r\n" for i in range(n))
    head, sep, tail = sdp.partition("a=mid:0\r\n")
    return head + sep + lines + tail


def many_sections(sdp: str, n: int, bundle: bool) -> str:
    """`n` small video sections, each with its own mid; ICE and DTLS said once for the session
    (the real offer's), all in one BUNDLE group or each on its own transport."""
    media = sdp.partition("m=video")[2]
    ice = "".join(line + "\r\n" for line in media.split("\r\n")
                  if line.startswith(("a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=setup")))
    group = ("a=group:BUNDLE " + " ".join(str(i) for i in range(n)) + "\r\n") if bundle else ""
    sections = "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=recvonly\r\n"
                       f"a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n" for i in range(n))
    return "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + group + ice + sections


async def test_hostile_sdp_is_bounded(server):
    http, svc, viewer, before = server
    sdp = await client_offer_sdp()
    limit = svc.settings.MAX_BODY_BYTES
    cases = {
        "100 kB line": sdp + "a=x-junk:" + "x" * 100_000 + "\r\n",
        "60 kB line": sdp + "a=x-junk:" + "x" * 60_000 + "\r\n",
        "60 kB session line": sdp.replace("s=-", "s=" + "x" * 60_000, 1),
        "thousands of candidates": with_candidates(sdp, 3000),
        "as many candidates as fit": with_candidates(sdp, 700),
        "hundreds of bundled media sections": many_sections(sdp, 400, bundle=True),
        "hundreds of media sections, one transport each": many_sections(sdp, 400, bundle=False),
        "only media sections": "v=0\r\n" + "m=video 9 RTP/AVP 96\r\n" * 3000,
        "lines without end": "v=0\r" + "m=video 9 RTP/AVP 96\r" * 2000,
        "many attributes": sdp.replace("a=mid:0\r\n", "a=mid:0\r\n" + "a=ssrc:1 cname:x\r\n" * 3000),
    }
    for what, text in cases.items():
        body = json.dumps({"sdp": text, "type": "offer"}).encode()
        started = time.monotonic()
        r = await asyncio.wait_for(post_raw(http, body), 60)
        elapsed = time.monotonic() - started
        if len(body) > limit:
            assert r.status_code == 413, (what, r.status_code)
        if r.status_code == 200:  # answered within the limits: the session closes like any other
            assert (await http.delete(f"/api/session/{r.json()['session_id']}")).status_code == 200
        else:
            assert_refused(r, (400, 413, 422), what)
        assert elapsed < 30, (what, elapsed)  # generous: parsing is bounded by the body cap
        assert counts(svc)[:2] == before[:2], what
    await viewer.still_streaming()


async def test_offers_with_hundreds_of_sections_or_candidates_are_refused(server):
    """These fit under MAX_BODY_BYTES: unrefused, 400 sections without BUNDLE would open 400
    transports (sockets, ICE, DTLS) for one offer, and 700 candidates make ICE check 700 addresses."""
    http, svc, viewer, before = server
    sdp = await client_offer_sdp()
    cases = {"sections": many_sections(sdp, 400, bundle=False), "sections ": many_sections(sdp, 400, bundle=True),
             "candidates": with_candidates(sdp, 700)}
    for what, text in cases.items():
        r = await post_raw(http, json.dumps({"sdp": text, "type": "offer"}).encode())
        if r.status_code == 200:
            await http.delete(f"/api/session/{r.json()['session_id']}")
        assert_refused(r, (400,), what)
        assert what.strip() in r.json()["detail"], r.text
        assert counts(svc) == before, what
    await viewer.still_streaming()


# -- bodies ---------------------------------------------------------------------------------
async def test_hostile_bodies(server):
    http, svc, viewer, before = server
    sdp = await client_offer_sdp()
    good = json.dumps({"sdp": sdp, "type": "offer"})
    cases = [
        ("nested arrays", "[" * 30000 + "]" * 30000, "application/json"),
        ("nested objects", '{"a":' * 10000 + "1" + "}" * 10000, "application/json"),
        ("nested under sdp", '{"sdp": ' + "[" * 900 + "]" * 900 + ', "type": "offer"}', "application/json"),
        ("nested under model", '{"sdp": "v=0", "type": "offer", "model": ' + '{"a":' * 900 + "1" + "}" * 900 + "}",
         "application/json"),
        ("huge number", '{"sdp": 1' + "0" * 5000 + ', "type": "offer"}', "application/json"),
        ("latin-1", '{"sdp": "v=0 caf\xe9", "type": "offer"}'.encode("latin-1"), "application/json"),
        ("bad utf-8", b'{"sdp": "v=0 \xff\xfe\xc3", "type": "offer"}', "application/json"),
        ("utf-8 surrogate bytes", b'{"sdp": "\xed\xa0\x80", "type": "offer"}', "application/json"),
        ("utf-16", json.dumps({"sdp": "v=0", "type": "offer"}).encode("utf-16"), "application/json"),
        ("binary", os.urandom(4096), "application/json"),
        ("NUL bytes", b"\x00" * 1000, "application/json"),
        ("empty", b"", "application/json"),
        ("not JSON", "sdp=v%3D0&type=offer", "application/json"),
        ("form", "sdp=v%3D0&type=offer", "application/x-www-form-urlencoded"),
        ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\n\r\nv=0\r\n--b--\r\n",
         "multipart/form-data; boundary=b"),
        ("text with JSON", good, "text/plain"),
        ("xml", "<offer><sdp>v=0</sdp></offer>", "application/xml"),
        ("no content type", good, None),
        ("octet-stream", good, "application/octet-stream"),
        ("image", good, "image/png"),
        ("garbage content type", good, "\x01/\x02"),
        ("JSON string", json.dumps(sdp), "application/json"),
        ("JSON number", "1e999", "application/json"),
        ("JSON null", "null", "application/json"),
        ("array of offers", json.dumps([{"sdp": sdp, "type": "offer"}] * 3), "application/json"),
        ("duplicate keys", '{"sdp": "v=0", "sdp": 5, "type": "offer"}', "application/json"),
        ("trailing data", good + "garbage", "application/json"),
        ("wrong types", json.dumps({"sdp": {"v": 0}, "type": ["offer"], "model": 5, "source": True}),
         "application/json"),
    ]
    for what, content, content_type in cases:
        started = time.monotonic()
        r = await asyncio.wait_for(post_raw(http, content, content_type), 60)
        assert_refused(r, (400, 413, 415, 422), what)
        assert time.monotonic() - started < 30, what
        assert counts(svc) == before, what
    for method, path in (("GET", "/api/session/" + "x" * 5000), ("DELETE", "/api/session/..%2f..%2fetc"),
                         ("GET", "/api/session/%00"), ("GET", "/api/sources/%2e%2e/snapshot.jpg"),
                         ("PUT", "/api/offer"), ("PATCH", "/api/session/x")):
        r = await http.request(method, path)
        assert_refused(r, (404, 405), f"{method} {path[:40]}")
    await viewer.still_streaming()
    assert counts(svc) == before


# -- capacity -------------------------------------------------------------------------------
async def test_fifty_simultaneous_offers_twenty_places(server):
    """MAX_SESSIONS=21 and one viewer: 20 places left for 50 real aiortc offers at once."""
    http, svc, viewer, before = server
    sdps = await asyncio.gather(*(client_offer_sdp() for _ in range(50)))
    answers = await asyncio.gather(*(post_offer(http, sdp=sdp, type="offer") for sdp in sdps))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) == 20 and statuses.count(503) == 30, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit() and r.json()["code"] == "server_full"
    assert len(svc.sessions.sessions) == 21
    await viewer.still_streaming()
    for r in answers:
        if r.status_code == 200:
            assert (await http.delete(f"/api/session/{r.json()['session_id']}")).status_code == 200
    assert counts(svc)[:2] == before[:2]
    r = await post_offer(http, sdp=sdps[0], type="offer")  # places free again
    assert r.status_code == 200
    assert (await http.delete(f"/api/session/{r.json()['session_id']}")).status_code == 200
    await viewer.still_streaming()
    assert counts(svc)[:2] == before[:2]
