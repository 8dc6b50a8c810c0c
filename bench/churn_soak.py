"""Churn soak (not a test): connect / stream / drop, over and over, against `python main.py`.

Each cycle connects one viewer (every fourth in camera mode with a synthetic camera), receives a
few frames, then ends it one of three ways in turn: DELETE, the client closing its peer
connection, or the client vanishing without a word (its sockets close; the server notices by
RTCP silence, PEER_INACTIVITY_TIMEOUT=2). It reports the server's RSS, threads, file descriptors,
peer connections and pipelines at the start and every 100 cycles, each time after every session
has ended (vanished peers reaped), and the RSS growth from the end of the warm-up to the end.

    .venv/bin/python bench/churn_soak.py --cycles 1000 --warmup 100     # figures in doc/RELIABILITY.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.server import server  # noqa: E402


def proc_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
    return {"rss_mb": round(rss, 1), "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def figures(http, pid: int) -> dict:
    info = (await http.get("/info")).json()
    return {**proc_figures(pid), "peer_connections": info["sessions"]["peer_connections"],
            "sessions": info["sessions"]["active"], "pipelines": len(info["pipelines"]["pipelines"]),
            "captures": len(info["pipelines"]["captures"])}


async def settle(http, pid: int, timeout: float = 30) -> dict:
    """Wait until every session and pipeline has ended (vanished peers are reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        now = await figures(http, pid)
        if (now["sessions"], now["peer_connections"], now["pipelines"]) == (0, 0, 0) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


async def cycle(url: str, i: int) -> None:
    import httpx

    from marked_frames import MarkedCamera
    from rtc_client import connect

    camera = i % 4 == 3
    viewer = await connect(url, send_track=MarkedCamera() if camera else None)
    await viewer.receive(8, timeout=30)
    ending = i % 3
    if ending == 0:
        async with httpx.AsyncClient(base_url=url) as http:
            await http.delete(f"/api/session/{viewer.session_id}")
        await viewer.close()
    elif ending == 1:
        await viewer.close()
    else:  # the client's sockets close without a word
        viewer.vanish()
        await asyncio.sleep(0)
        await viewer.close()


async def run(cycles: int, warmup: int) -> dict:
    import httpx

    from webrtc.ice import restrict_host_addresses

    restrict_host_addresses(["127.0.0.1"])
    with server(DEFAULT_MODEL="none", PEER_INACTIVITY_TIMEOUT="2", MAX_SESSIONS="200") as (url, proc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            start = await figures(http, proc.pid)
            after_warmup = None
            checkpoints = []
            t0 = time.monotonic()
            failures = 0
            for i in range(cycles):
                try:
                    await cycle(url, i)
                except Exception as exc:  # counted, never hidden
                    failures += 1
                    print(f"cycle {i}: {exc!r}", file=sys.stderr)
                if (i + 1) % 100 == 0 or i + 1 == warmup:
                    settled = await settle(http, proc.pid)
                    checkpoints.append({"cycles": i + 1, **settled})
                    if i + 1 == warmup:
                        after_warmup = settled
                    print(f"{i + 1} cycles, {time.monotonic() - t0:.0f} s: {settled}", file=sys.stderr, flush=True)
            end = await settle(http, proc.pid)
            reasons = (await http.get("/info")).json()["sessions"]["closed"]
    return {"cycles": cycles, "warmup": warmup, "failures": failures, "seconds": round(time.monotonic() - t0),
            "start": start, "after_warmup": after_warmup, "end": end, "closed": reasons,
            "rss_mb_every_100": [c["rss_mb"] for c in checkpoints],
            "rss_growth_after_warmup_mb": round(end["rss_mb"] - after_warmup["rss_mb"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.cycles, args.warmup)), indent=2))


if __name__ == "__main__":
    main()
