"""Time to first frame in view mode (a benchmark, not a test).

The server (`python main.py`, its own process, loopback, no STUN) plays a 640×480 30 fps file
whose frames carry their index as black/white blocks (`tests/marked_frames.py`). Each viewer is
an aiortc client that decodes what it gets and reads the index back.

"First frame" is the first frame that decodes cleanly (its blocks read back), is followed by 30
clean decodes, and is at most 2 frames behind the live stream. The live reference is another
viewer of the same source (the `Keeper`, which keeps it running): the index it received at that
same moment. So a stale cached keyframe, or a viewer that starts late and stays late, shows as
frames behind. (A cold source and the anchor have no older frame to be stale: there the
reference is the viewer's own later frames.) Per join it stamps each stage (answer back, ICE
connected, DTLS connected, first decoded frame, first frame) from the moment the offer is sent;
`offer_prep` is the client's own offer (ICE gathering) before that, not counted.

Cases: the first viewer of a cold source (`--cold` times, the source stopped in between); a
viewer joining the running source, interleaved with the anchor in `--pairs` pairs (`--anchors`
anchor runs, then `--joins` joins, per pair), each pair's p50 difference and their median; and
`--burst` viewers joining the running source at once (two client processes, released together).
The anchor is the camera-mode first frame of `bench/echo_server.py` (plain aiortc, its default
500 kbit/s, the same definition); VisionGuard runs at `--bitrate` (500 kbit/s by default: the same).

    .venv/bin/python bench/first_frame.py --model person --json first.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.camera_latency import echo_server  # noqa: E402
from bench.server import server  # noqa: E402
from marked_frames import MarkedCamera, mark, read_mark  # noqa: E402
from rtc_client import on_rtp  # noqa: E402

FPS = 30
CLEAN_AFTER = 30
MAX_BEHIND = 2
STAGES = ("offer_prep", "answer", "ice", "dtls", "first_packet", "first_decoded", "first_frame")


def marked_video(path: Path, seconds: int) -> None:
    """A file of marked frames (H.264, ultrafast: cheap for the server to decode)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        stream.codec_context.time_base = Fraction(1, FPS)
        for i in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(mark(i), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane (the marks are black and white): far cheaper for the client than BGR."""
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]


class Keeper:
    """A viewer that keeps a source running and is the live reference: it decodes every frame
    and notes when each index arrived."""

    def __init__(self) -> None:
        self.frames: deque[tuple[float, int]] = deque(maxlen=FPS * 900)
        self._task: asyncio.Task | None = None
        self._viewer = None

    async def start(self, url: str) -> None:
        from rtc_client import connect

        self._viewer = await connect(url)
        track = await self._viewer.track()
        self._task = asyncio.ensure_future(self._drain(track))
        while len(self.frames) < 10:
            await asyncio.sleep(0.05)

    async def _drain(self, track) -> None:
        while True:
            frame = await track.recv()
            index = read_mark(luma(frame))
            if index is not None:
                self.frames.append((time.monotonic(), index))

    def index_at(self, t: float) -> float | None:
        """The index the live stream showed at monotonic time `t` (from the frames around it)."""
        near = [index - FPS * (when - t) for when, index in self.frames if abs(when - t) <= 1.0]
        return statistics.median(near) if near else None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._viewer is not None:
            await self._viewer.close()


def evaluate(row: dict, live: Keeper | None = None) -> dict:
    """Find the first frame that counts (see the module's doc) in a join's frames. Behind is
    measured against `live` (another viewer's arrivals) or, without one, against the join's own
    later frames (cold start, anchor: no older frame exists to be stale)."""
    frames, t0 = row.pop("frames", []), row.pop("t0", 0.0)
    if "error" in row:
        return row
    for i in range(len(frames) - CLEAN_AFTER):
        run = frames[i:i + CLEAN_AFTER + 1]
        if any(index is None for _, index in run):
            continue
        if live is not None:
            reference = live.index_at(run[0][0])
            if reference is None:
                continue
        else:
            reference = statistics.median(index - FPS * (t - run[0][0]) for t, index in run[10:])
        behind = reference - run[0][1]
        if behind <= MAX_BEHIND + 0.5:  # half a frame for the arrival jitter of the estimate
            return {**row, "first_frame": round((run[0][0] - t0) * 1000, 1), "behind": round(behind, 1)}
    return {**row, "error": "no clean first frame"}


def stamp_first_packet(pc, stamps: dict) -> None:
    """Note when the first video RTP packet reaches the client's receiver (before its jitter
    buffer and decoder): what separates the server's sending from the client's own work."""
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
    on_rtp(receiver, lambda packet: stamps.setdefault("first_packet", time.monotonic()))


async def join(url: str, send_track=None, timeout: float = 20.0, gate=None, collect_s: float = 2.5) -> dict:
    """One viewer (camera mode with `send_track`): stage times in ms from the moment the offer is
    sent (`offer_prep`: the client's own offer before that, not counted), and the (arrival,
    index) of every frame for `collect_s` after the first decoded one (see `evaluate`). With
    `gate`, the offer is prepared, then sent once `await gate()` returns."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    stamps: dict[str, float] = {}
    prep = time.monotonic()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(send_track, direction="sendrecv") if send_track else pc.addTransceiver("video", direction="recvonly")
    track_future = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track_future.done() or track_future.set_result(t))
    pc.on("iceconnectionstatechange", lambda: pc.iceConnectionState == "completed" and stamps.setdefault("ice", time.monotonic()))
    pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and stamps.setdefault("dtls", time.monotonic()))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer_prep = round((time.monotonic() - prep) * 1000, 1)
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:  # (its set-up costs the client ~10 ms)
            if gate is not None:
                await gate()
            t0 = time.monotonic()
            r = await http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        if r.status_code != 200:
            return {"error": f"{r.status_code} {r.text[:200]}"}
        stamps["answer"] = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
        stamp_first_packet(pc, stamps)
        track = await asyncio.wait_for(track_future, timeout)
        frames: list[tuple[float, int | None]] = []
        while not frames or frames[-1][0] - frames[0][0] < collect_s:
            frame = await asyncio.wait_for(track.recv(), timeout)
            now = time.monotonic()
            stamps.setdefault("first_decoded", now)
            frames.append((now, read_mark(luma(frame))))
        return {**{k: round((v - t0) * 1000, 1) for k, v in stamps.items()}, "offer_prep": offer_prep,
                "t0": t0, "frames": frames}
    except asyncio.TimeoutError:
        return {"error": "no video in time"}
    finally:
        await pc.close()


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    out = {"n": len(rows), "failed": len(rows) - len(ok)}
    if out["failed"]:  # which kind: "no video in time", "no clean first frame" (never 30 clean
        # decodes within 2 frames of live), or the server's refusal ("<status> <body>")
        out["errors"] = dict(Counter(r["error"] for r in rows if "error" in r))
    for stage in STAGES:
        values = [r[stage] for r in ok if stage in r]
        if values:
            out[stage] = {"p50": round(statistics.median(values), 1), "max": round(max(values), 1)}
    out["behind_max"] = max((r["behind"] for r in ok), default=None)
    return out


async def source_state(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return next(s["state"] for s in (await http.get("/api/sources")).json()["sources"] if s["name"] == "default")


async def cold_joins(url: str, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        deadline = time.monotonic() + 20
        while await source_state(url) != "idle" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        rows.append(evaluate(await join(url)))
    return rows


async def anchor_joins(n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        with echo_server() as url:
            camera = MarkedCamera(fps=FPS)
            rows.append(evaluate(await join(url, send_track=camera)))
            camera.stop()
    return rows


async def paired_joins(url: str, pairs: int, anchors_per_pair: int, joins_per_pair: int) -> dict:
    """Anchor first frames and joins of the running source, interleaved pair by pair."""
    keeper = Keeper()
    await keeper.start(url)
    try:
        anchor_rows, join_rows, diffs = [], [], []
        for _ in range(pairs):
            anchor = await anchor_joins(anchors_per_pair)
            joined = []
            for _ in range(joins_per_pair):
                joined.append(evaluate(await join(url), keeper))
                await asyncio.sleep(0.3)
            anchor_rows += anchor
            join_rows += joined
            a, j = summary(anchor), summary(joined)
            if "first_frame" in a and "first_frame" in j:
                diffs.append(round(j["first_frame"]["p50"] - a["first_frame"]["p50"], 1))
        return {"anchor": summary(anchor_rows), "join": summary(join_rows), "pair_diffs_ms": diffs,
                "median_diff_ms": statistics.median(diffs) if diffs else None}
    finally:
        await keeper.stop()


def burst_worker(url: str, n: int, go: mp.Event, ready: mp.Queue, out: mp.Queue) -> None:
    async def main():
        from webrtc.ice import restrict_host_addresses

        restrict_host_addresses(["127.0.0.1"])
        prepared = asyncio.Semaphore(0)

        async def gate():  # every offer of this process prepared, then all sent together
            prepared.release()
            while not go.is_set():
                await asyncio.sleep(0.001)

        joins = asyncio.gather(*(join(url, timeout=30, gate=gate) for _ in range(n)))
        for _ in range(n):
            await prepared.acquire()
        ready.put(n)
        out.put(await joins)
    asyncio.run(main())


async def burst(url: str, n: int, processes: int = 2) -> list[dict]:
    keeper = Keeper()  # the live reference (the clocks of all processes are the same monotonic clock)
    await keeper.start(url)
    try:
        go, ready, out = mp.Event(), mp.Queue(), mp.Queue()
        counts = [n // processes + (i < n % processes) for i in range(processes)]
        workers = [mp.Process(target=burst_worker, args=(url, c, go, ready, out)) for c in counts]
        for w in workers:
            w.start()
        for _ in workers:
            await asyncio.get_running_loop().run_in_executor(None, ready.get, True, 60)
        await asyncio.sleep(1.0)
        go.set()
        rows = []
        for _ in workers:
            rows += await asyncio.get_running_loop().run_in_executor(None, out.get, True, 120)
        for w in workers:
            w.join(30)
        return [evaluate(r, keeper) for r in rows]
    finally:
        await keeper.stop()


async def run(args) -> dict:
    from webrtc.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    cases = args.cases.split(",")
    result = {"model": args.model, "bitrate": args.bitrate}
    with tempfile.TemporaryDirectory() as media:
        marked_video(Path(media) / "marked.mp4", 300)
        settings = {"DEFAULT_MODEL": args.model, "MEDIA_DIR": media, "VIDEO_FILE_PATH": "marked.mp4",
                    "VIDEO_BITRATE": args.bitrate}
        if "cold" in cases or "join" in cases:
            with server(**settings) as (url, _):
                evaluate(await join(url))  # warm-up: imports, the model's first run
                if "cold" in cases:
                    result["cold"] = summary(await cold_joins(url, args.cold))
                if "join" in cases:
                    result |= await paired_joins(url, args.pairs, args.anchors, args.joins)
        if "burst" in cases:
            with server(**settings) as (url, _):
                evaluate(await join(url))
                result["burst"] = summary(await burst(url, args.burst))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="person")
    ap.add_argument("--bitrate", type=int, default=500_000, help="VIDEO_BITRATE (aiortc's own default: the anchor's)")
    ap.add_argument("--pairs", type=int, default=4, help="anchor/join pairs, interleaved")
    ap.add_argument("--anchors", type=int, default=3, help="anchor first frames per pair")
    ap.add_argument("--joins", type=int, default=5, help="joins of the running source per pair")
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--burst", type=int, default=32)
    ap.add_argument("--cases", default="cold,join,burst")
    ap.add_argument("--json")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print("| case | n | failed | " + " | ".join(f"{s} p50/max ms" for s in STAGES) + " | frames behind (max) |")
    print("|---|---|---|" + "---|" * len(STAGES) + "---|")
    for case in (c for c in ("anchor", "join", "cold", "burst") if c in result):
        r = result[case]
        cells = [f"{r[s]['p50']}/{r[s]['max']}" if s in r else "-" for s in STAGES]
        print(f"| {case} | {r['n']} | {r['failed']} | " + " | ".join(cells) + f" | {r['behind_max']} |")
    for case in (c for c in ("anchor", "join", "cold", "burst") if result.get(c, {}).get("errors")):
        print(f"\n{case}: failed joins by kind: {result[case]['errors']}")
    if "pair_diffs_ms" in result:
        print(f"\njoin − anchor, first frame p50 per pair: {result['pair_diffs_ms']} ms; "
              f"median {result['median_diff_ms']} ms")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
