"""TURN without shared static passwords: `/api/ice-servers` mints time-limited credentials in
coturn's REST-API scheme when TURN_SECRET is set, and a real coturn (Debian's `turnserver`,
started here on loopback) relays video with them and refuses expired ones."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time

import httpx
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

import turn_server
from conftest import TEST_ENV, running_server
from config import load_settings
from rtc_client import connect

SECRET = "vg-turn-test-secret-0123456789abcdef"


def coturn_credential(secret: str, username: str) -> str:
    """What coturn computes for `use-auth-secret` (written out here, not taken from webrtc.turn)."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture
def coturn(tmp_path):
    if not turn_server.available():
        message = "coturn's turnserver is missing (scripts/system-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = turn_server.TurnServer(tmp_path, SECRET)
    server.start()
    yield server
    server.stop()


def relay_only(ice_servers: list[dict]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers],
                            iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def ice_transport(viewer):
    return viewer.pc.getTransceivers()[0].receiver.transport.transport  # RTCIceTransport


async def gather(configuration: RTCConfiguration) -> list:
    """The local candidates a viewer's peer connection gathers for its offer."""
    pc = RTCPeerConnection(configuration)
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        candidates = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalCandidates()
        assert len(candidates) == pc.localDescription.sdp.count("a=candidate:")
        return candidates
    finally:
        await pc.close()


async def allocate(server: "turn_server.TurnServer", username: str, credential: str) -> None:
    """One TURN allocation on `server` with these credentials (raises if coturn refuses)."""
    import aioice.stun
    import aioice.turn

    transport, _ = await aioice.turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=("127.0.0.1", server.port), username=username, password=credential)
    transport.close()
    assert isinstance(transport, aioice.turn.TurnTransport)


def test_credentials_follow_coturns_rest_api_scheme():
    from webrtc.turn import turn_credentials

    creds = turn_credentials("s3cret", "alice", 3600, now=1_700_000_000.7)
    assert creds.username == "1700003600:alice" and creds.expires_at == 1_700_003_600
    # echo -n 1700003600:alice | openssl dgst -sha1 -hmac s3cret -binary | base64
    assert creds.credential == "YAFdW/YDZewZsR1QSgUk2IrfbRI="
    assert creds.credential == coturn_credential("s3cret", "1700003600:alice")


async def test_ice_servers_route_mints_credentials_per_caller_and_keeps_static_ones():
    import main

    generated = {"urls": ["turn:turn.example.com:3478", "turns:turn.example.com:5349?transport=tcp"]}
    static = {"urls": "turn:static.example.com:3478", "username": "alice", "credential": "t0ps3cret"}
    settings = load_settings(**{**TEST_ENV, "STUN_SERVERS": ["stun:stun.example.com:3478"],
                                "TURN_SERVERS": [generated, static], "TURN_SECRET": SECRET, "TURN_TTL_S": 600})
    app = main.create_app(settings)  # the route needs no lifespan
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vg") as http:
        before = int(time.time())
        r = await http.get("/api/ice-servers")
        after = int(time.time())
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        stun, minted, kept = r.json()["iceServers"]
        assert stun == {"urls": "stun:stun.example.com:3478"}
        assert kept == static
        assert minted["urls"] == generated["urls"]
        expiry, subject = minted["username"].split(":", 1)
        assert subject == "anonymous" and before + 600 <= int(expiry) <= after + 600
        assert minted["credential"] == coturn_credential(SECRET, minted["username"])
        assert SECRET not in r.text and SECRET not in (await http.get("/openapi.json")).text

    # with access control on, the credentials name the token's subject
    from api.tokens import mint_token

    jwt_secret = "turn-test-jwt-secret-" + "0" * 32
    app = main.create_app(load_settings(**{**settings.model_dump(), "AUTH_MODE": "jwt", "JWT_SECRET": jwt_secret}))
    token = mint_token(jwt_secret, "bob", "view", 600)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vg") as http:
        assert (await http.get("/api/ice-servers")).status_code == 401
        r = await http.get("/api/ice-servers", headers={"Authorization": f"Bearer {token}"})
        minted = r.json()["iceServers"][1]
        assert minted["username"].endswith(":bob")
        assert minted["credential"] == coturn_credential(SECRET, minted["username"])


def test_the_servers_peer_connections_get_their_own_credentials():
    from webrtc.ice import rtc_configuration
    from webrtc.turn import server_configuration

    turn = [{"urls": "turn:turn.example.com:3478"},
            {"urls": "turn:static.example.com:3478", "username": "alice", "credential": "t0ps3cret"}]
    settings = load_settings(**{**TEST_ENV, "TURN_SERVERS": turn, "TURN_SECRET": SECRET})
    before = int(time.time())
    minted, kept = server_configuration(settings).iceServers
    expiry, subject = minted.username.split(":", 1)
    assert subject == "visionguard-server" and before + 3600 <= int(expiry) <= int(time.time()) + 3600
    assert minted.credential == coturn_credential(SECRET, minted.username)
    assert (kept.username, kept.credential) == ("alice", "t0ps3cret")

    without_secret = load_settings(**{**TEST_ENV, "TURN_SERVERS": turn})
    assert server_configuration(without_secret) == rtc_configuration(without_secret.ice_servers)


async def test_relay_only_client_gets_video_through_coturn(coturn):
    async with running_server(TURN_SECRET=SECRET, TURN_SERVERS=[{"urls": coturn.url}]) as (url, svc):
        async with httpx.AsyncClient(base_url=url) as http:
            ice = (await http.get("/api/ice-servers")).json()["iceServers"]
        assert ice[0]["username"].endswith(":anonymous"), ice
        viewer = await connect(url, configuration=relay_only(ice))
        try:
            frames = await viewer.receive(10)
            assert len(frames) == 10 and frames[-1][1].shape == (480, 640, 3)
            transport = ice_transport(viewer)
            gathered = transport.iceGatherer.getLocalCandidates()
            assert gathered and {c.type for c in gathered} == {"relay"}, gathered
            nominated = transport._connection._nominated  # aioice 0.13: component → the pair in use
            assert nominated and {p.local_candidate.type for p in nominated.values()} == {"relay"}, nominated
            assert all(p.local_candidate.port != 0 and p.remote_addr[0] == "127.0.0.1" for p in nominated.values())
            # coturn's side: it authenticated the minted username and relays to the server's address
            log = coturn.log_text()
            assert f"user <{ice[0]['username']}>: incoming packet ALLOCATE processed, success" in log, log[-3000:]
        finally:
            await viewer.close()


async def test_coturn_refuses_expired_credentials(coturn):
    import aioice.stun

    from webrtc.turn import turn_credentials

    valid = turn_credentials(SECRET, "alice", 600)
    await allocate(coturn, valid.username, valid.credential)  # the same server takes fresh ones
    expired = turn_credentials(SECRET, "alice", -60)
    forged = turn_credentials("not-" + SECRET, "alice", 600)
    for creds in (expired, forged):
        with pytest.raises(aioice.stun.TransactionFailed) as refused:
            await allocate(coturn, creds.username, creds.credential)
        assert refused.value.response.error_code == 401, str(refused.value)

    # A relay-only client handed them gathers no candidate, so it has nothing to connect with
    # (aiortc does not even start ICE then); the same client with fresh ones gathers a relay.
    assert await gather(relay_only([{"urls": coturn.url, "username": expired.username,
                                     "credential": expired.credential}])) == []
    fresh = await gather(relay_only([{"urls": coturn.url, "username": valid.username,
                                      "credential": valid.credential}]))
    assert [c.type for c in fresh] == ["relay"], fresh
