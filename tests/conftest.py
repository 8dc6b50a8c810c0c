from __future__ import annotations

import asyncio
import socket
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import load_settings  # noqa: E402
from webrtc.ice import restrict_host_addresses  # noqa: E402

# The test process is the WebRTC client: offer loopback only (aioice skips 127.0.0.1).
restrict_host_addresses(["127.0.0.1"])

TEST_ENV = {"STUN_SERVERS": [], "ICE_HOST_ADDRESSES": ["127.0.0.1"], "SERVER_HOST": "127.0.0.1",
            "DEFAULT_MODEL": "none",  # tests that want a model name it
            "EVENTS_FILE": "",  # events in memory: no test writes ./events.jsonl (test_events uses tmp_path)
            "SATURATION_LAG_S": 0}  # a busy test box must not refuse offers; tests/test_saturation.py turns it on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vg_threads() -> list[str]:
    """Every live `vg-*` thread in the process, whoever started it. Prefer `ThreadWatch`: a
    thread left behind by an earlier test would make a count of these fail a later one."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("vg-"))


class ThreadWatch:
    """The `vg-*` threads started since this watch was made, told apart by object, not by name
    (a thread an earlier test left behind, even with the same name, is not counted)."""

    def __init__(self) -> None:
        self.before = set(threading.enumerate())  # strong references: no object is reused

    def new(self) -> list[str]:
        return sorted(t.name for t in threading.enumerate()
                      if t not in self.before and t.name.startswith("vg-"))


@pytest.fixture
def threads() -> ThreadWatch:
    """Taken before the test's server starts: `threads.new()` are the threads it started."""
    return ThreadWatch()


def startup_error(monkeypatch, **env: str) -> str:
    """The one line start-up stops with, given these environment variables (JSON for lists and
    maps). In-process: the same `load_settings()` + `create_app()` that `python main.py` runs,
    both of which raise `InvalidSettings` before anything starts. (test_config keeps one real
    `python main.py` run for how that line reaches stderr.)"""
    import main
    from config import InvalidSettings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings) as caught:
        main.create_app(load_settings())
    message = caught.value.code
    assert isinstance(message, str) and message.strip() and "\n" not in message.strip(), repr(message)
    return message


def build_test_app():
    """The app as `create_app` builds it from the test settings (nothing started)."""
    import main

    return main.create_app(load_settings(**TEST_ENV))


def main_py_stop_line(prelude: str) -> str:
    """Run `python main.py` after `prelude` (Python that breaks something); assert that start-up
    stops with exit 2 and exactly one line on stderr, and return that line."""
    import os
    import subprocess

    script = f"import sys, runpy; {prelude}; sys.argv = ['main.py']; runpy.run_path('main.py', run_name='__main__')"
    env = {**os.environ, "STUN_SERVERS": "[]", "DEFAULT_MODEL": "none"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


@asynccontextmanager
async def running_server(port: int = 0, log_level: str = "warning", http: str = "h11", **overrides):
    """A real uvicorn server on a loopback port (free unless given), in this event loop
    (`http`: uvicorn's HTTP implementation, `h11` or `httptools`)."""
    import main

    port = port or free_port()
    settings = load_settings(**{**TEST_ENV, "SERVER_PORT": port, **overrides})
    app = main.create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on",
                                            http=http))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.services
    finally:
        server.should_exit = True
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:  # say what holds the shutdown (uvicorn waits for open responses) before failing
            held = _shutdown_holders(server)
            server.force_exit = True
            await asyncio.wait({task}, timeout=10)
            raise AssertionError(f"the server did not shut down within 30 s; still open: {held}")
        task.result()


def _shutdown_holders(server) -> str:
    """The HTTP requests a stuck shutdown waits for: each connection's request and its task's stack."""
    import io

    out = []
    for protocol in list(server.server_state.connections):
        cycle = getattr(protocol, "cycle", None)
        scope = getattr(cycle, "scope", None) or {}
        out.append(f"{scope.get('method')} {scope.get('path')} (response complete: "
                   f"{getattr(cycle, 'response_complete', None)})")
    for task in list(server.server_state.tasks):
        stack = io.StringIO()
        task.print_stack(limit=8, file=stack)
        out.append(stack.getvalue()[-1500:])
    if not out:  # no request holds it: the lifespan's shutdown does; show where every task waits
        for task in asyncio.all_tasks():
            if "lifespan" in repr(task.get_coro()) or "vg-" in task.get_name():
                stack = io.StringIO()
                task.print_stack(limit=12, file=stack)
                out.append(f"{task.get_name()}: {stack.getvalue()[-1500:]}")
        return "lifespan shutdown; " + "; ".join(out)
    return "; ".join(out)


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    return d


def write_video(path: Path, frames: int = 30, fps: int = 10, size=(320, 240)) -> Path:
    """A small real H.264/MPEG-4 file made with PyAV: a moving white square on grey."""
    import av
    import numpy as np

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.full((h, w, 3), 90, np.uint8)
            x = (i * 7) % (w - 40)
            img[100:140, x:x + 40] = 255
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


VTEST = ROOT / "media" / "vtest.avi"


@pytest.fixture(scope="session")
def vtest() -> Path:
    """OpenCV's pedestrian sample, fetched by `make test` (scripts/fetch-vtest.sh)."""
    import os

    if not VTEST.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("media/vtest.avi is missing: run scripts/fetch-vtest.sh")
        pytest.skip("media/vtest.avi is missing: run make demo-video")
    return VTEST


def vtest_frames(path: Path, n: int, size=(640, 480)):
    """The first `n` frames of vtest.avi at the output size, as the pipeline sees them."""
    import av
    import cv2

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA))
            if len(out) == n:
                break
    return out


def people_and_blank(vtest: Path, out: Path, parts: list[tuple[str, float]], fps: int = 10) -> Path:
    """A video file of vtest.avi's own size made of `parts`: ("people", seconds) of vtest.avi
    (from its start) and ("blank", seconds) of black frames, in order (a file source loops)."""
    import av
    import numpy as np

    people = vtest_frames(vtest, int(sum(s for kind, s in parts if kind == "people") * fps), size=(768, 576))
    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        stream.bit_rate = 2_000_000
        for kind, seconds in parts:
            for _ in range(int(seconds * fps)):
                img = people.pop(0) if kind == "people" else np.zeros((576, 768, 3), np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                    dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


class RtspServer:
    """GStreamer's RTSP server in a child process (tests/rtsp_server.py), killable and restartable."""

    SCRIPT = ROOT / "tests" / "rtsp_server.py"

    def __init__(self, user: str = "vg", password: str = "s3cret") -> None:
        import subprocess

        self.port = free_port()
        self.user, self.password = user, password
        self.proc: "subprocess.Popen | None" = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.user}:{self.password}@127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(["/usr/bin/python3", str(self.SCRIPT), str(self.port), self.user, self.password],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line + self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _gst_rtsp_available() -> bool:
    import subprocess

    check = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        return subprocess.run(["/usr/bin/python3", "-c", check], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def need(present: bool, message: str) -> None:
    """A system dependency the test needs: skipped without it, but a failure under CI=true."""
    import os

    if not present:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def started_redis_server():
    """A real redis-server on a free loopback port (Debian's; scripts/system-deps.sh installs it),
    or the test is skipped (failed under CI=true) when it is missing."""
    from redis_server import RedisServer, available

    need(available(), "redis-server is missing (scripts/system-deps.sh installs it)")
    server = RedisServer()
    server.start()
    return server


@pytest.fixture
def redis_server():
    server = started_redis_server()
    yield server
    server.stop()


@pytest.fixture
def rtsp_server():
    need(_gst_rtsp_available(), "GStreamer's RTSP server is missing (scripts/system-deps.sh installs it)")
    server = RtspServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def browser():
    """A context of Debian's Chromium driven by Playwright (tests/chromium.py), granted camera and
    microphone: without them Chromium gathers no loopback candidate."""
    import os

    from chromium import CHROMIUM, FLAGS
    from playwright.async_api import async_playwright

    need(os.path.exists(CHROMIUM), "Chromium is missing (scripts/system-deps.sh installs it)")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = await chromium.new_context(permissions=["camera", "microphone"])
        yield context
        await context.close()
        await chromium.close()
