"""Sessions give back everything when they end: after a short churn of connect / stream / drop
(DELETE, client close, client vanishing; view and camera mode), the server holds no peer
connection, frame, track, pipeline, thread or file descriptor more than before — without the
help of Python's cycle collector (a session's memory is freed when it ends, not at the next
full collection). RSS belongs to bench/churn_soak.py."""

from __future__ import annotations

import gc
import os
import threading

import av
import httpx
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from compat.aiortc import break_cycles
from conftest import running_server
from marked_frames import MarkedCamera
from rtc_client import connect
from test_webrtc import wait_until

COUNTED = (RTCPeerConnection, av.VideoFrame, MediaStreamTrack)


def alive() -> dict[str, int]:
    counts = {t.__name__: 0 for t in COUNTED}
    for o in gc.get_objects():
        for t in COUNTED:
            if isinstance(o, t):
                counts[t.__name__] += 1
    return counts


def new_threads(before: set) -> list[str]:
    return sorted(t.name for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio_"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_short_churn_leaves_nothing_behind():
    async with running_server(PEER_INACTIVITY_TIMEOUT=1) as (url, svc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            warm = await connect(url)  # warm-up: pools and caches that live as long as the process
            await warm.receive(5)
            await http.delete(f"/api/session/{warm.session_id}")
            await warm.close()
            break_cycles(warm.pc)
            del warm
            assert await wait_until(lambda: svc.hub.stats()["pipelines"] == [], 15)
            gc.collect()
            gc.disable()
            try:
                before_objects, before_threads, before_fds = alive(), set(threading.enumerate()), fds()
                for i in range(6):
                    viewer = await connect(url, send_track=MarkedCamera() if i % 2 else None)
                    await viewer.receive(8)
                    if i % 3 == 0:
                        await http.delete(f"/api/session/{viewer.session_id}")
                    elif i % 3 == 2:  # the client's sockets close without a word
                        viewer.vanish()
                    await viewer.close()
                    break_cycles(viewer.pc)  # the test client's own aiortc cycles are not under test
                    del viewer
                assert await wait_until(lambda: not svc.sessions.sessions and not svc.sessions.peer_connections, 20)
                assert await wait_until(lambda: svc.hub.stats()["pipelines"] == svc.hub.stats()["captures"] == [], 15)
                # asyncio's default executor (to_thread) is a bounded pool that may grow up to its size
                assert await wait_until(lambda: not new_threads(before_threads), 15), new_threads(before_threads)
                # closed transports' last callbacks may still be on their way out
                assert await wait_until(lambda: all(alive()[k] <= n for k, n in before_objects.items()), 10), \
                    (alive(), before_objects)
                assert fds() <= before_fds
                assert svc.sessions.closed_reasons.get("peer-inactive", 0) >= 1
            finally:
                gc.enable()
