"""Everything an offer acquires (its place in MAX_SESSIONS, the pipeline viewer, the peer
connection) is released on every way out: refused by aiortc (400), a bug of ours (500, logged
and counted), or the request cancelled midway."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from aiortc import RTCPeerConnection

import signaling
from api.tokens import ANONYMOUS
from conftest import running_server
from test_api import client_offer_sdp


def held(svc) -> tuple:
    stats = svc.hub.stats()
    return (svc.sessions._reserved, len(svc.sessions.sessions), len(svc.sessions.peer_connections),
            len(stats["pipelines"]), len(stats["captures"]))


async def test_an_offer_cancelled_midway_leaves_nothing(monkeypatch):
    async with running_server() as (url, svc):
        sdp = await client_offer_sdp()
        gathering = asyncio.Event()

        async def hangs(self, description=None):  # ICE gathering that never ends
            gathering.set()
            await asyncio.sleep(3600)

        monkeypatch.setattr(RTCPeerConnection, "setLocalDescription", hangs)
        body = signaling.OfferRequest(sdp=sdp, type="offer")
        task = asyncio.create_task(signaling.offer(body, svc, svc.sessions, ANONYMOUS))
        await asyncio.wait_for(gathering.wait(), 20)
        assert held(svc) == (1, 0, 1, 1, 1)  # reserved, a peer connection, a pipeline
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)
        assert held(svc) == (0, 0, 0, 0, 0)


async def test_a_bug_during_an_offer_is_a_logged_500_and_leaves_nothing(monkeypatch, caplog):
    async with running_server() as (url, svc):
        def broken(*args, **kwargs):
            raise TypeError("a bug of ours")

        import webrtc.answer

        monkeypatch.setattr(webrtc.answer, "negotiated_codec", broken)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            server_log = logging.getLogger("uvicorn.error")  # uvicorn logs the traceback, once
            server_log.addHandler(caplog.handler)
            try:
                r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
            finally:
                server_log.removeHandler(caplog.handler)
            assert r.status_code == 500 and r.json()["code"] == "internal_error"
            logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR and (rec.exc_info or rec.exc_text)]
            assert len(logged) == 1 and "a bug of ours" in caplog.text, "a 500 is logged with its traceback, once"
            await asyncio.sleep(0.5)
            assert held(svc) == (0, 0, 0, 0, 0)
            assert (await http.get("/info")).json()["sessions"]["internal_errors"] == 1


async def test_an_offer_aiortc_cannot_use_is_a_400_and_leaves_nothing():
    async with running_server() as (url, svc):
        sdp = (await client_offer_sdp()).replace("a=setup:actpass", "a=setup:bogus")
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/api/offer", json={"sdp": sdp, "type": "offer"})
        assert r.status_code == 400 and r.json()["code"] == "bad_offer", r.text
        assert held(svc) == (0, 0, 0, 0, 0)


async def test_every_answer_names_its_node_a_500_too(monkeypatch):
    async with running_server(NODE_ID="web-7") as (url, svc):
        def broken(*args, **kwargs):
            raise TypeError("a bug of ours")

        import webrtc.answer

        monkeypatch.setattr(webrtc.answer, "negotiated_codec", broken)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post("/api/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
            assert r.status_code == 500 and r.headers["x-visionguard-node"] == "web-7"
            for answer in (await http.get("/health"), await http.get("/nowhere"),
                           await http.post("/api/offer", content=b"x" * 70000)):
                assert answer.headers["x-visionguard-node"] == "web-7", answer.status_code
