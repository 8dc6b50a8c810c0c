"""Recording cost (not a test): what a recorded source costs the server, and whether viewers
keep their frame rate while several sources record at once. Runs `python main.py` (model
`none`, synthetic sources kept on with `always_on`, so only video and recording work counts)
and measures the server process's CPU from /proc.

1. One source: server CPU with nothing watching; recording it (the recorder starts the H.264
   encoder: one encode + mux); with an H.264 viewer; the same viewer plus a recording (the
   encode is reused: mux only).
2. Four sources, one VP8 viewer each: the viewers' received fps and the server CPU without
   recordings and with all four recording (each its own H.264 encode + mux).

    .venv/bin/python bench/recording.py --seconds 20      # figures in doc/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402

from bench.server import server  # noqa: E402
from rtc_client import connect  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def cpu_percent(pid: int, seconds: float) -> float:
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0), 1)


class FrameClock:
    """Receives a viewer's video from the start (nothing piles up) and keeps arrival times."""

    def __init__(self, viewer) -> None:
        self.times: list[float] = []
        self.task = asyncio.create_task(self._run(viewer))

    async def _run(self, viewer) -> None:
        track = await viewer.track()
        while True:
            await track.recv()
            self.times.append(time.monotonic())

    def fps(self, t0: float, t1: float) -> float:
        return round(sum(t0 <= t < t1 for t in self.times) / (t1 - t0), 1)

    def stop(self) -> None:
        self.task.cancel()


async def one_source(seconds: float, warmup: float) -> dict:
    sources = {"s1": {"url": "synthetic", "always_on": True}}
    with tempfile.TemporaryDirectory() as rec, server(SOURCES=json.dumps(sources), DEFAULT_MODEL="none",
                                                      RECORDINGS_DIR=rec, EVENTS_FILE="") as (url, proc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            out = {}
            await asyncio.sleep(warmup)
            out["idle"] = await cpu_percent(proc.pid, seconds)
            assert (await http.post("/api/sources/s1/record")).status_code == 201
            await asyncio.sleep(warmup)
            out["recording (H.264 encode + mux)"] = await cpu_percent(proc.pid, seconds)
            stopped = (await http.delete("/api/sources/s1/record")).json()
            viewer = await connect(url, source="s1", codec="h264")
            clock = FrameClock(viewer)
            await asyncio.sleep(warmup)
            out["an H.264 viewer"] = await cpu_percent(proc.pid, seconds)
            assert (await http.post("/api/sources/s1/record")).status_code == 201
            await asyncio.sleep(warmup)
            out["the viewer + recording (encode reused: mux only)"] = await cpu_percent(proc.pid, seconds)
            clock.stop()
            await viewer.close()
            final = (await http.delete("/api/sources/s1/record")).json()
            out["file bytes/s"] = round(stopped["bytes"] / max(stopped["duration_s"], 1e-9))
            out["dropped frames"] = stopped.get("dropped_frames", 0) + final.get("dropped_frames", 0)
            return out


async def four_sources(seconds: float, warmup: float, record: bool) -> dict:
    names = [f"s{i}" for i in range(1, 5)]
    sources = {n: {"url": "synthetic", "always_on": True} for n in names}
    with tempfile.TemporaryDirectory() as rec, server(SOURCES=json.dumps(sources), DEFAULT_MODEL="none",
                                                      RECORDINGS_DIR=rec, EVENTS_FILE="") as (url, proc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            viewers = [await connect(url, source=n) for n in names]
            clocks = [FrameClock(v) for v in viewers]
            if record:
                for n in names:
                    assert (await http.post(f"/api/sources/{n}/record")).status_code == 201
            await asyncio.sleep(warmup)
            t0 = time.monotonic()
            cpu = await cpu_percent(proc.pid, seconds)
            fps = [c.fps(t0, time.monotonic()) for c in clocks]
            for c in clocks:
                c.stop()
            dropped = 0
            if record:
                for n in names:
                    dropped += (await http.delete(f"/api/sources/{n}/record")).json().get("dropped_frames", 0)
            for v in viewers:
                await v.close()
            return {"server CPU %": cpu, "viewer fps": fps, "recording dropped frames": dropped}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    print("one source, server CPU %:", json.dumps(await one_source(args.seconds, args.warmup), indent=1))
    for record in (False, True):
        figures = await four_sources(args.seconds, args.warmup, record)
        print(f"four sources, one VP8 viewer each, {'all recording' if record else 'no recording'}:",
              json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
