"""Secrets never leave the process, and no server path leaves it either.

Every configured password (`SOURCES`, `VIDEO_FILE_PATH`), key and credential must be absent, whole
and in part, from `/api/sources`, `/health`, `/info`, error texts, the start-up banner and every log
line (uvicorn's access log included); the media folder's absolute path from every answer. The
sources here point at closed loopback ports: they fail and retry, which is what puts their URLs
into error texts and logs."""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

import core.redact as redact_mod
from conftest import free_port, running_server, startup_error, write_video
from core.redact import RedactingFilter, redact

# (url with {port} for a closed port, the secrets it holds: none of them may show anywhere)
SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "at": ("rtsp://admin:Pw1@ss@x1@127.0.0.1:{port}/s1", ("Pw1@ss@x1", "ss@x1", "@x1@")),
    "quote": ("rtsp://admin:Pw2'quote@127.0.0.1:{port}/s2", ("Pw2'quote", "Pw2", "quote@")),
    "quotes": ("rtsp://admin:Pw3\"dq'sq@127.0.0.1:{port}/s3", ("Pw3", "dq'sq")),
    "ipv6": ("rtsp://u:Pw4ipv6@[::1]:{port}/x", ("Pw4ipv6",)),
    "ipv6ll": ("rtsp://u:Pw5linklocal@[fe80::1]:554/x", ("Pw5linklocal",)),
    "query": ("http://127.0.0.1:{port}/x.cgi?user=admin&password=Pw6query&ch=1", ("Pw6query",)),
    "pct": ("rtsp://admin:Pw7%40pct%27x@127.0.0.1:{port}/s7", ("Pw7%40pct%27x", "Pw7@pct'x", "pct%27x")),
    "rtsps": ("rtsps://admin:Pw8tls@127.0.0.1:{port}/s8", ("Pw8tls",)),
    "rtmp": ("rtmp://admin:Pw9rtmp@127.0.0.1:{port}/live/stream", ("Pw9rtmp",)),
    "srt": ("srt://127.0.0.1:{port}?streamid=cam&passphrase=Pw10srtphrase", ("Pw10srtphrase",)),
    "pathseg": ("rtsp://cam:Ch11seg@127.0.0.1:{port}/Ch11seg", ("Ch11seg",)),
    "tokens": ("http://127.0.0.1:{port}/snap?token=Pw12tok&SIG=Pw12sig&X-Amz-Signature=Pw12amz",
               ("Pw12tok", "Pw12sig", "Pw12amz")),
    "useronly": ("rtsp://Pw13useronly@127.0.0.1:{port}/x", ("Pw13useronly",)),
    "slash": ("rtsp://admin:Pw14/slash@127.0.0.1:{port}/x", ("Pw14/slash", "slash@")),
    "hash": ("rtsp://admin:Pw15#hash@127.0.0.1:{port}/x", ("Pw15#hash", "hash@")),
    "upper": ("RTSP://Admin:Pw16UPPER@127.0.0.1:{port}/x", ("Pw16UPPER",)),
    "pwdcase": ("http://127.0.0.1:{port}/cgi?User=admin&PWD=Pw17pwd&Key=Pw17key", ("Pw17pwd", "Pw17key")),
    "colons": ("rtsp://admin:Pw18:co:lon@127.0.0.1:{port}/x", ("Pw18:co:lon", "co:lon@")),
    "pctuser": ("rtsp://us%3Aer:Pw19pct@127.0.0.1:{port}/x", ("Pw19pct",)),
    "access": ("https://127.0.0.1:{port}/x?access_token=Pw20access&api_key=Pw20api", ("Pw20access", "Pw20api")),
    "semicolon": ("rtsp://admin:Pw21;se,mi@127.0.0.1:{port}/x", ("Pw21;se,mi", "se,mi@")),
}
#: sources started at once (always_on), so that their errors reach /api/sources, /health and the log
ALWAYS_ON = ("at", "quote", "quotes", "ipv6", "query", "pct", "pathseg", "hash", "slash", "rtmp")
FAST = {"RTSP_OPEN_TIMEOUT_S": 0.5, "RTSP_STALL_TIMEOUT_S": 0.5, "RTSP_RECONNECT_MAX_S": 1.0}
ALL_SECRETS = [s for _, secrets in SHAPES.values() for s in secrets]
KEYS = {"JWT_SECRET": "Jw7-secret-0123456789abcdef0123456789", "TURN_SECRET": "Tu7-turn-secret-xyz-0123456789abcdef",
        "SIGNING_KEY": "Sk7-signing-key-0123456789abcdef0123"}
TURN_CREDENTIAL = "Tc7-static-credential"


@pytest.fixture(autouse=True)
def fresh_registry():
    """The secrets registry is process-wide: each test here starts and ends with it empty."""
    clear = getattr(redact_mod, "clear_secrets", lambda: None)
    clear()
    yield
    clear()


def leaks(text: str, secrets=ALL_SECRETS) -> list[str]:
    return [s for s in secrets if s in text]


def log_text(caplog) -> str:
    return "\n".join(r.getMessage() + "\n" + (r.exc_text or "") + "\n" + (r.stack_info or "")
                     for r in caplog.records) + "\n" + caplog.text


# -- redact() on its own ---------------------------------------------------------------------------
#: (text, what redact shows of it, what must not be left)
TRICKY = [
    ("rtsp://admin:p@ss@cam/stream", "rtsp://***@cam/stream", ["p@ss", "ss@"]),
    ("cannot open rtsp://admin:it's@cam/x: refused", "rtsp://***@cam/x: refused", ["it's", "s@"]),
    ("'rtsp://admin:it\\'s\"q@cam'", "rtsp://***@cam", ["it\\'s", "q@"]),
    ("rtsp://u:pw@[fe80::1]:554/x", "rtsp://***@[fe80::1]:554/x", ["pw@"]),
    ("rtsp://admin:p%40ss%27@cam:554/h264", "rtsp://***@cam:554/h264", ["p%40ss"]),
    ("http://cam/x.cgi?user=admin&password=hunter2&ch=1", "?user=admin&password=***&ch=1", ["hunter2"]),
    ("http://cam/x?Token=t1&SIG=s1&X-Amz-Signature=a1&access_token=b1&apikey=c1&passwd=d1",
     "?Token=***&SIG=***&X-Amz-Signature=***&access_token=***&apikey=***&passwd=***", ["t1", "s1", "a1", "b1", "c1"]),
    ("srt://cam:9000?streamid=x&passphrase=longphrase", "streamid=x&passphrase=***", ["longphrase"]),
    ('GET /api/recordings/7?exp=17&sub=alice&sig=AbC-_x9 HTTP/1.1', "sub=alice&sig=*** HTTP", ["AbC-_x9"]),
    ("rtsps://a:b1c2@cam/x and rtmp://c:d3e4@live/app", "rtsps://***@cam/x and rtmp://***@live/app", ["b1c2", "d3e4"]),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***", ["abc.def"]),
    ("[(b'host', b'x'), (b'authorization', b'Basic dXNlcjpwYXNz')]", "b'Basic ***'", ["dXNlcjpwYXNz"]),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl", "token ***", ["eyJhbGci", "c2lnbmF0dXJl"]),
    ("{'urls': 'turn:t', 'username': 'u', 'credential': 'cr3d'}", "'credential': '***'", ["cr3d"]),
    ("keyframe_interval=2 passive=1 AUTH_MODE=jwt kid=k1", "keyframe_interval=2 passive=1 AUTH_MODE=jwt kid=k1", []),
]


def test_redact_masks_the_tricky_shapes():
    wrong = {}
    for text, shown, hidden in TRICKY:
        out = redact(text)
        if shown not in out or leaks(out, hidden) or redact(out) != out:  # masking twice changes nothing
            wrong[text] = out
    assert wrong == {}


def test_configured_secrets_are_masked_by_exact_value_wherever_they_appear():
    redact_mod.register_secrets(["Pw-plain-1", "p@ss/with#all?", "it's", None, ""])
    redact_mod.register_secrets(redact_mod.url_secrets("rtsp://a:Pw%2Fenc@cam/x?pwd=Qv-77&x=1"))
    text = ("free text Pw-plain-1 and 'p@ss/with#all?' and Pw/enc decoded, Pw%2Fenc raw, Qv-77, "
            "json \"p@ss/with#all?\" and it's")
    out = redact(text)
    assert leaks(out, ["Pw-plain-1", "p@ss/with#all?", "Pw/enc", "Pw%2Fenc", "Qv-77", "it's"]) == [], out
    assert "free text *** and" in out
    redact_mod.clear_secrets()  # resettable: tests start from nothing
    assert redact("Pw-plain-1") == "Pw-plain-1" and redact_mod.registered_secrets() == frozenset()


def test_log_filter_keeps_uvicorns_access_records_formattable_and_masks_them():
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/api/x.jpg?exp=1&sub=a&sig=S1gn4ture&token=T0k3n",
                                "1.1", 200), None)
    assert RedactingFilter().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert "sig=***&token=***" in line and leaks(line, ["S1gn4ture", "T0k3n"]) == [], line
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "headers %s then %s",
                              ([(b"authorization", b"Bearer s3cr3t-b34r3r-t0k3n")],
                               "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"), None)
    assert RedactingFilter().filter(other)
    assert leaks(other.getMessage(), ["s3cr3t-b34r3r-t0k3n", "eyJhbGci"]) == [], other.getMessage()


# -- a real server -------------------------------------------------------------------------------
@asynccontextmanager
async def access_logged_server(**overrides):
    """Like conftest's running_server, with uvicorn's access log on (it logs path and query)."""
    try:
        async with running_server(log_level="info", **overrides) as (url, _):
            yield url
    finally:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)  # as the other tests' servers have it


async def test_access_log_and_answers_never_carry_signatures_or_configured_keys(caplog, capfd):
    caplog.set_level(logging.INFO)
    turn = [{"urls": "turn:127.0.0.1:3478", "username": "alice", "credential": TURN_CREDENTIAL}]
    async with access_logged_server(TURN_SERVERS=turn, **KEYS) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            for path in ("/health?exp=1&sub=a&sig=Zs1gZs1gZs1g", "/info?token=Zt0kZt0k&password=Zp4ssZp4ss"):
                assert (await http.get(path)).status_code == 200
            answers = [(await http.get(p)).text for p in ("/health", "/info", "/api/sources")]
        # a line that names them (an exception, a debug dump) comes out masked
        logging.getLogger("visionguard.test").warning("keys %s %s %s %s", *KEYS.values(), TURN_CREDENTIAL)
    out = capfd.readouterr()
    logs = out.out + out.err + log_text(caplog)
    secrets = ["Zs1gZs1gZs1g", "Zt0kZt0k", "Zp4ssZp4ss", *KEYS.values(), TURN_CREDENTIAL]
    assert "GET /health?exp=1&sub=a&sig=*** HTTP/1.1" in logs, logs[-3000:]
    assert leaks(logs, secrets) == [] and leaks(" ".join(answers), secrets) == []
    assert {*KEYS.values(), TURN_CREDENTIAL} <= redact_mod.registered_secrets()


def _sources(media_dir: Path, outside: Path) -> dict:
    port = free_port()  # nothing listens there: every network source fails at once and retries
    sources = {name: {"url": url.format(port=port), "always_on": name in ALWAYS_ON, "model": "none"}
               for name, (url, _) in SHAPES.items()}
    (media_dir / "sub").mkdir()
    write_video(media_dir / "sub" / "clip.mp4", frames=5)
    (media_dir / "sub" / "bad.mp4").write_bytes(b"not a video at all" * 64)
    write_video(outside / "far.mp4", frames=5)
    sources.update({
        "clip": "sub/clip.mp4",
        "absclip": str(media_dir / "sub" / "clip.mp4"),
        "far": str(outside / "far.mp4"),
        "bad": {"url": "sub/bad.mp4", "always_on": True, "model": "none"},
    })
    return sources


async def test_no_password_or_server_path_in_answers_error_texts_banner_or_logs(tmp_path, media_dir, caplog,
                                                                                 capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr("api.catalog.SNAPSHOT_WAIT_S", 0.3)  # a failing source's snapshot: 503 with its error
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sources = _sources(media_dir, outside)
    default = SHAPES["at"][0].format(port=free_port())
    answers: list[str] = []
    async with running_server(MEDIA_DIR=media_dir, VIDEO_FILE_PATH=default, SOURCES=sources, **FAST) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            failing = set(ALWAYS_ON) | {"bad"}
            for _ in range(600):  # until every always-on source has failed once (each fails in well under 1 s)
                listed = {s["name"]: s for s in (await http.get("/api/sources")).json()["sources"]}
                if all(listed[n]["last_error"] for n in failing):
                    break
                await asyncio.sleep(0.1)
            assert all(listed[n]["state"] in ("failed", "reconnecting") for n in failing), listed
            for route in ("/api/sources", "/health", "/info", "/api/models", "/"):
                answers.append((await http.get(route)).text)
            for name in ("at", "quote", "hash", "bad"):
                snap = await http.get(f"/api/sources/{name}/snapshot.jpg")
                assert snap.status_code == 503, snap.text
                answers.append(snap.text)
            health, info = (await http.get("/health")).json(), (await http.get("/info")).json()
    out = capfd.readouterr()
    banner, logs = out.out, out.out + out.err + log_text(caplog)
    everything = "\n".join(answers) + banner + logs
    where = {s: [everything[max(0, m.start() - 80):m.end() + 20] for m in re.finditer(re.escape(s), everything)][:3]
             for s in leaks(everything)}
    assert where == {}
    for path in {str(tmp_path), str(tmp_path.resolve())}:
        assert path not in "\n".join(answers)
    # what is shown instead: URLs without credentials, files relative to MEDIA_DIR (or their last part)
    assert listed["at"]["url"] == f"rtsp://***@127.0.0.1:{sources['at']['url'].rsplit(':', 1)[1]}"
    assert listed["query"]["url"].endswith("/x.cgi?user=admin&password=***&ch=1")
    assert listed["ipv6ll"]["url"] == "rtsp://***@[fe80::1]:554/x"
    shown_files = (listed["clip"]["url"], listed["absclip"]["url"], listed["far"]["url"])
    assert shown_files == ("sub/clip.mp4", "sub/clip.mp4", "far.mp4")
    assert "rtsp://***@127.0.0.1" in listed["at"]["last_error"] and "bad.mp4" in listed["bad"]["last_error"]
    assert info["video"]["path"] == f"rtsp://***@127.0.0.1:{default.rsplit(':', 1)[1]}"
    assert health["status"] == "degraded" and any("Source at is" in p for p in health["problems"])
    assert f"✓ Source: {info['video']['path']} (RTSP)" in banner and "Video file not found" not in banner


async def test_each_shape_as_video_file_path_is_shown_redacted_everywhere(capfd, caplog):
    caplog.set_level(logging.INFO)
    for name, (url, secrets) in SHAPES.items():
        url = url.format(port=free_port())
        async with running_server(VIDEO_FILE_PATH=url) as (base, _):
            async with httpx.AsyncClient(base_url=base) as http:
                info = (await http.get("/info")).json()
                texts = [(await http.get(r)).text for r in ("/api/sources", "/health")] + [str(info)]
        banner = capfd.readouterr().out
        shown = info["video"]["path"]
        assert leaks("\n".join(texts) + banner + log_text(caplog), secrets) == [], name
        assert shown and "***" in shown and shown.split("://")[1].lstrip("*@")[:4] in url, (name, shown)
        assert f"✓ Source: {shown} ({url.split('://')[0].upper()})" in banner, (name, banner)


@pytest.mark.parametrize("video,line", [
    ("device:0", "✓ Source: device:0"),
    ("sub/gone.mp4", "⚠ Video file not found: sub/gone.mp4 (streaming the built-in synthetic source)"),
    ("{media}/sub/gone.mp4", "⚠ Video file not found: sub/gone.mp4 (streaming the built-in synthetic source)"),
    ("sub/here.mp4", "✓ Video file found: sub/here.mp4"),
])
async def test_banner_health_and_info_say_the_truth_without_server_paths(media_dir, capfd, video, line):
    (media_dir / "sub").mkdir()
    write_video(media_dir / "sub" / "here.mp4", frames=5)
    video = video.format(media=media_dir)
    async with running_server(MEDIA_DIR=media_dir, VIDEO_FILE_PATH=video) as (base, _):
        async with httpx.AsyncClient(base_url=base) as http:
            health, info = (await http.get("/health")).json(), (await http.get("/info")).json()
            texts = [(await http.get(r)).text for r in ("/health", "/info", "/api/sources")]
    banner = capfd.readouterr().out
    assert line in banner, banner
    assert "⚠ Auth: off — anyone who reaches the port can watch every camera" in banner
    shown = line.split(": ", 1)[1].split(" (")[0]
    assert info["video"]["path"] == shown and str(media_dir) not in "".join(texts) + banner
    if "not found" in line:
        assert health["problems"] == [
            f"VIDEO_FILE_PATH {shown!r} was not found; streaming the synthetic source instead."]
    else:
        assert health["source"]["detail"] == shown


async def test_banner_says_auth_is_on_and_a_wildcard_cors_with_auth_is_logged(caplog, capfd):
    caplog.set_level(logging.INFO)
    async with running_server(AUTH_MODE="jwt", JWT_SECRET=KEYS["JWT_SECRET"], JWT_ALGORITHMS=["HS256"],
                              CORS_ORIGINS=["*"]):
        logging.getLogger("visionguard.test").error("oops with %s", KEYS["JWT_SECRET"])
    banner = capfd.readouterr().out
    assert "✓ Auth: JWT (HS256)" in banner and "Auth: off" not in banner, banner
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CORS_ORIGINS" in w and "AUTH_MODE=jwt" in w for w in warnings), warnings
    assert KEYS["JWT_SECRET"] not in log_text(caplog) + banner


@pytest.mark.parametrize("env", [
    {"STUN_SERVERS": '["http://admin:Pw1@ss@x1@cam/s"]'},  # the wrong value is echoed in the error
    {"STUN_SERVERS": '["http://admin:Pw2\'quote@cam/s"]'},
    {"TURN_SERVERS": '[{"urls": "rtsp://admin:Pw1@ss@x1@cam/s", "credential": "Pw2\'quote"}]'},
])
def test_startup_errors_never_show_a_password(monkeypatch, env):
    message = startup_error(monkeypatch, **env)
    assert leaks(message, ["Pw1@ss@x1", "ss@x1", "Pw2'quote", "quote@"]) == [], message


async def test_the_redis_password_never_shows(caplog, capfd):
    """REDIS_URL's password is a secret: not in answers, logs or the banner, whether Redis takes
    it or refuses a wrong one (redis-py's errors name the server, never the URL)."""
    from conftest import started_redis_server
    from redis_server import RedisServer

    caplog.set_level(logging.DEBUG)
    right, wrong = "Rd7-right-pass-0123456789", "Rd7-wrong-pass-9876543210"
    server = started_redis_server()  # (skips or fails here if redis-server is missing)
    server.stop()
    server = RedisServer(password=right)
    server.start()
    answers = []
    try:
        for password, status in ((right, "ok"), (wrong, "down")):
            url = server.url.replace(right, password)
            async with running_server(REDIS_URL=url, NODE_ID=f"n-{status}") as (base, svc):
                async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                    for _ in range(50):
                        health = (await http.get("/health")).json()
                        if health["cluster"]["redis"] == status:
                            break
                        await asyncio.sleep(0.1)
                    assert health["cluster"]["redis"] == status, health
                    for route in ("/health", "/info", "/api/sessions", "/api/sources", "/api/recordings"):
                        answers.append((await http.get(route)).text)
                    answers.append((await http.post("/api/offer", json={"sdp": "v=0", "type": "offer"})).text)
    finally:
        server.stop()
    out = capfd.readouterr()
    everything = "\n".join(answers) + out.out + out.err + log_text(caplog)
    assert leaks(everything, [right, wrong]) == []
    assert "Redis" in everything  # the down worker did say what is wrong
