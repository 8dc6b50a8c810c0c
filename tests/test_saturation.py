"""Issue 15: an offer the server knows it cannot serve well gets 503 `saturated` instead of
becoming a viewer at a few frames a second. The signal: the event loop (which sends every
viewer's packets) running late most of the time (median lag over 5 s above SATURATION_LAG_S)."""

from __future__ import annotations

import asyncio
import time

import httpx

from conftest import running_server
from rtc_client import connect
from test_api import client_offer_sdp


async def test_an_offer_to_a_saturated_server_is_refused_until_it_recovers():
    async with running_server(SATURATION_LAG_S=0.1) as (url, svc):
        busy = True

        async def hog() -> None:  # the loop busy most of the time, as on a box that cannot keep up
            while busy:
                time.sleep(0.2)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(hog())
        try:
            deadline = time.monotonic() + 20
            while svc.loop_lag.recent_median(5.0) <= 0.1:
                assert time.monotonic() < deadline, "the loop lag never rose"
                await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
            assert r.status_code == 503 and r.json()["code"] == "saturated", r.text
            assert r.headers["retry-after"] == "5" and "late" in r.json()["detail"]
            assert svc.sessions.sessions == {} and not svc.sessions.peer_connections  # nothing was made
        finally:
            busy = False
            await task
        deadline = time.monotonic() + 30
        while svc.loop_lag.recent_median(5.0) > 0.1:  # the lag window forgets the busy spell
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        viewer = await connect(url)
        await viewer.receive(5)
        await viewer.close()
