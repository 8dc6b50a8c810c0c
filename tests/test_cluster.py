"""Issue 14: several worker processes on one real redis-server act as one service.

Each node is a real `python main.py` (tests/cluster_nodes.py) with its own port, so that a test
can choose which worker a request reaches; SESSION_TTL_S is 3 s here."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiortc.mediastreams import MediaStreamError

from cluster_nodes import info, start_nodes
from rtc_client import connect

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(redis_server, tmp_path):
    nodes = start_nodes(redis_server.url, tmp_path, 2)
    yield nodes
    for node in nodes:
        node.stop()


def captures(nodes) -> int:
    return sum(info(n)["pipelines"]["captures_started"] for n in nodes if n.proc.poll() is None)


async def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def sessions_seen(http: httpx.AsyncClient, node) -> set[str]:
    return set((await http.get(node.url + "/api/sessions")).json()["active_sessions"])


async def test_workers_agree_share_one_pipeline_and_close_each_others_sessions(cluster):
    a, b = cluster
    one = await connect(a.url)
    two = await connect(b.url)  # the same source: its owner answers, whichever node got the offer
    try:
        await one.receive(10)
        await two.receive(10)
        assert captures(cluster) == 1, "the source was opened once in the cluster"
        processed = [info(n)["pipelines"]["pipelines_started"] for n in cluster]
        assert sorted(processed) == [0, 1], "one node runs the model"

        async with httpx.AsyncClient(timeout=10) as http:
            answers = [await sessions_seen(http, node) for node in (a, b) * 10]
            assert all(seen == {one.session_id, two.session_id} for seen in answers), answers
            nodes = {(await http.get(n.url + "/health")).headers["x-visionguard-node"] for n in cluster}
            assert nodes == {"node-a", "node-b"}
            for node in cluster:  # every worker describes every session
                for viewer in (one, two):
                    r = await http.get(f"{node.url}/api/session/{viewer.session_id}")
                    assert r.status_code == 200 and r.json()["source"] == "default", r.text
            owner = next(n for n in cluster if info(n)["pipelines"]["pipelines_started"] == 1)
            other = b if owner is a else a
            assert list(info(owner)["cluster"]["leases"]) == ["default"] and not info(other)["cluster"]["leases"]
            assert info(owner)["cluster"]["handoffs_served"] >= 1  # the other node's offer was handed to it
            r = await http.delete(f"{other.url}/api/session/{one.session_id}")
            assert r.status_code == 200, r.text
            track = await one.track()
            with pytest.raises(MediaStreamError):  # the owner closed it: the client's track ends
                for _ in range(300):
                    await asyncio.wait_for(track.recv(), 10)
            assert await wait_until(lambda: _only(http, cluster, {two.session_id}), 10, "the session list")
            await two.receive(5)  # the other viewer goes on
    finally:
        await one.close()
        await two.close()


async def _only(http, nodes, expected: set) -> bool:
    return all([await sessions_seen(http, n) == expected for n in nodes])


async def test_admission_is_atomic_across_workers(redis_server, tmp_path):
    nodes = start_nodes(redis_server.url, tmp_path, 2, MAX_SESSIONS=10)
    try:
        viewers = []
        offers = []
        from aiortc import RTCConfiguration, RTCPeerConnection

        for _ in range(4):  # 4 different offers, each sent 10 times: 40 offers at once
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(pc.localDescription.sdp)
            viewers.append(pc)
        async with httpx.AsyncClient(timeout=60) as http:
            results = await asyncio.gather(*(
                http.post(nodes[i % 2].url + "/api/offer", json={"sdp": offers[i % 4], "type": "offer"})
                for i in range(40)))
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) == 10, statuses
        assert statuses.count(503) == 30 and {r.json()["code"] for r in results if r.status_code == 503} == {
            "server_full"}
        for pc in viewers:
            await pc.close()
    finally:
        for node in nodes:
            node.stop()


def owner_of(nodes, source: str = "default"):
    for node in nodes:
        if any(c["source"] == source for c in info(node)["pipelines"]["captures"]):
            return node
    raise AssertionError(f"no node runs {source}")


async def test_a_killed_owner_leaves_no_ghosts_and_the_survivor_takes_the_source(cluster):
    viewer = await connect(cluster[0].url)
    await viewer.receive(5)
    owner = owner_of(cluster)
    survivor = next(n for n in cluster if n is not owner)
    owner.kill()
    killed = time.monotonic()
    await viewer.close()
    async with httpx.AsyncClient(timeout=10) as http:
        await wait_until(lambda: _only(http, [survivor], set()), 10, "the dead node's session to leave")
        gone_after = time.monotonic() - killed
        assert gone_after < 3 + 2, f"sessions left after {gone_after:.1f} s (SESSION_TTL_S=3, one keeper tick)"
        again = await connect(survivor.url)
        try:
            await again.receive(10)
            assert owner_of([survivor]) is survivor
            r = await http.get(f"{survivor.url}/api/session/{again.session_id}")
            assert r.status_code == 200
        finally:
            await again.close()


async def test_redis_loss_keeps_video_refuses_offers_and_recovers(cluster, redis_server):
    owner, other = cluster[1], cluster[0]
    viewer = await connect(owner.url)  # a free source goes to the node the offer reached (a tie)
    try:
        await viewer.receive(5)
        assert owner_of(cluster) is owner
        redis_server.stop()
        async with httpx.AsyncClient(timeout=20) as http:
            health = await wait_until(lambda: _degraded(http, other), 15, "/health to say Redis is down")
            assert health["cluster"]["redis"] == "down" and health["cluster"]["node_id"] == other.name
            await viewer.receive(30)  # the video already flowing goes on
            for node in cluster:
                r = await http.post(node.url + "/api/offer", json={"sdp": viewer.pc.localDescription.sdp,
                                                                    "type": "offer"})
                assert r.status_code == 503 and r.json()["code"] == "cluster_unavailable", r.text
                assert "Redis" in r.json()["detail"]
            redis_server.start()  # empty: no sessions, no leases
            back = time.monotonic()
            # at once, an offer through the node that does not run the source: refused while the
            # owner re-asserts its lease (never a second capture), then handed to the owner
            while True:
                try:
                    fresh = await connect(other.url)
                    break
                except AssertionError as refused:
                    assert "cluster_unavailable" in str(refused) and time.monotonic() - back < 15, refused
                    await asyncio.sleep(0.2)
            recovered = time.monotonic() - back
            try:
                await fresh.receive(5)
                assert recovered < 5, f"offers worked again {recovered:.1f} s after Redis returned"
                assert captures(cluster) == 1 and owner_of(cluster) is owner, "the owner kept its source"
                assert info(owner)["cluster"]["lost_leases"] == 0
                await wait_until(lambda: _has(http, other, viewer.session_id), 10, "the session to be re-asserted")
                assert (await http.get(other.url + "/health")).json()["cluster"]["redis"] == "ok"
            finally:
                await fresh.close()
            await viewer.receive(5)  # the first viewer was never cut off
    finally:
        await viewer.close()


async def _degraded(http, node):
    body = (await http.get(node.url + "/health")).json()
    return body if body["status"] == "degraded" and body.get("cluster", {}).get("redis") == "down" else None


async def _source(http, node, name):
    sources = (await http.get(node.url + "/api/sources")).json()["sources"]
    found = next(s for s in sources if s["name"] == name)
    return found if found["state"] == "live" else None


async def _events(http, node):
    return (await http.get(node.url + "/api/events?source=default")).json()["events"]


async def _has(http, node, session_id) -> bool:
    return session_id in await sessions_seen(http, node)


async def test_snapshot_events_and_recording_through_the_node_that_does_not_own_the_source(redis_server, tmp_path):
    from sse_client import SseClient

    # the pedestrians video with the person model: real person events, made by the owner
    cluster = start_nodes(redis_server.url, tmp_path, 2, VIDEO_FILE_PATH="vtest.avi", DEFAULT_MODEL="person")
    viewer = await connect(cluster[0].url)
    try:
        await viewer.receive(5)
        owner = owner_of(cluster)
        other = next(n for n in cluster if n is not owner)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(other.url + "/api/sources/default/snapshot.jpg")
            assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", r.text[:200]
            assert r.headers["x-visionguard-node"] == other.name
            r = await http.post(other.url + "/api/sources/default/record")
            assert r.status_code == 201, r.text
            recording = r.json()["recording_id"]
            default = await wait_until(lambda: _source(http, other, "default"), 10, "the owner's figures")
            assert default["viewers"] >= 1 and default["fps"] > 0, default  # (the recording counts too)
            await viewer.receive(30)
            r = await http.delete(other.url + "/api/sources/default/record")
            assert r.status_code == 200 and r.json()["recording_id"] == recording, r.text
            for node in cluster:  # listed by every node, downloadable through any
                listed = (await http.get(node.url + "/api/recordings")).json()["recordings"]
                assert [x["recording_id"] for x in listed] == [recording]
            r = await http.get(f"{other.url}/api/recordings/{recording}")
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and len(r.content) > 1000

            # events: made by the owner, listed, streamed and resumed through the other node
            seen = await wait_until(lambda: _events(http, other), 30, "a person_seen event on the other node")
            first = seen[-1]  # oldest
            assert (await http.get(owner.url + "/api/events")).json()["events"][-1] == first
            r = await http.get(f"{other.url}/api/events/{first['id']}/snapshot.jpg")  # kept by its maker
            assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", r.text[:200]
            async with SseClient(other.url, "/api/events/stream", {"Last-Event-ID": str(first["id"] - 1)}) as sse:
                assert await sse.wait_for(lambda events: bool(events), 10)
                assert sse.events[0]["id"] == first["id"] and sse.events[0]["data"] == first
        assert captures(cluster) == 1, "the camera was opened once"
    finally:
        await viewer.close()
        for node in cluster:
            node.stop()


async def test_a_stale_owner_stops_its_pipeline_and_camera_mode_stays_where_it_landed(cluster, redis_server):
    import redis

    from marked_frames import MarkedCamera

    viewer = await connect(cluster[1].url)
    camera = await connect(cluster[1].url, send_track=MarkedCamera(fps=15))
    try:
        await viewer.receive(5)
        await camera.receive(5)
        owner = owner_of(cluster)
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{cluster[1].url}/api/session/{camera.session_id}")
            assert r.json()["mode"] == "camera"
            assert any(c["kind"] == "camera" for c in info(cluster[1])["pipelines"]["captures"])
        # another node now holds the lease with a greater token (what a partition and expiry lead to)
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        node, token = client.get("vg:lease:default").rsplit("|", 1)
        assert node == owner.name
        client.set("vg:lease:default", f"node-elsewhere|{int(token) + 1}", px=60_000)
        track = await viewer.track()
        with pytest.raises(MediaStreamError):  # the stale owner stopped: its viewer's track ends
            for _ in range(300):
                await asyncio.wait_for(track.recv(), 10)
        assert not any(c["source"] == "default" for c in info(owner)["pipelines"]["captures"])
        await camera.receive(5)  # a camera-mode session does not depend on any lease
        client.delete("vg:lease:default")
        client.close()
    finally:
        await viewer.close()
        await camera.close()


async def test_offers_waiting_for_a_frozen_owner_keep_their_places(redis_server, tmp_path):
    """MAX_SESSIONS holds while offers wait on an owner that stalls longer than SESSION_TTL_S."""
    import signal

    from aiortc import RTCConfiguration, RTCPeerConnection

    a, b = start_nodes(redis_server.url, tmp_path, 2, MAX_SESSIONS=2, SOURCES={"lobby": "synthetic"})
    pcs = []
    try:
        async def offer(node, **fields):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc)
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient(timeout=30) as http:
                return await http.post(node.url + "/api/offer", json={"sdp": pc.localDescription.sdp,
                                                                      "type": "offer", **fields})

        async with httpx.AsyncClient(timeout=30) as http:  # a runs `default` (a snapshot starts it)
            assert (await http.get(a.url + "/api/sources/default/snapshot.jpg")).status_code == 200
        a.proc.send_signal(signal.SIGSTOP)
        try:
            waiting = [asyncio.ensure_future(offer(b)) for _ in range(2)]  # handed to the frozen owner
            await asyncio.sleep(4.0)  # longer than SESSION_TTL_S
            refused = await offer(b, source="lobby")
            assert refused.status_code == 503 and refused.json()["code"] == "server_full", refused.text
        finally:
            a.proc.send_signal(signal.SIGCONT)
        answered = await asyncio.gather(*waiting)
        assert [r.status_code for r in answered] == [200, 200], [r.text for r in answered]
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(b.url + "/api/sessions")).json()["count"] == 2
    finally:
        for pc in pcs:
            await pc.close()
        for node in (a, b):
            node.stop()


async def test_a_recording_another_worker_writes_is_not_finished_nor_deleted_by_a_restarted_one(cluster):
    owner, other = cluster
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(owner.url + "/api/sources/default/record")
        assert r.status_code == 201, r.text
        recording = r.json()["recording_id"]
        owner_name = owner_of(cluster).name
        assert owner_name == owner.name
        other.stop()  # a worker of the same box (same RECORDINGS_DIR) starts again
        other.start().wait_ready()
        listed = (await http.get(other.url + "/api/recordings")).json()["recordings"]
        assert [(x["recording_id"], x["state"]) for x in listed] == [(recording, "recording")]
        r = await http.delete(f"{other.url}/api/recordings/{recording}")
        assert r.status_code == 409 and r.json()["code"] == "still_recording", r.text
        r = await http.delete(other.url + "/api/sources/default/record")  # stopped through the other node
        assert r.status_code == 200 and r.json()["recording_id"] == recording, r.text
        listed = (await http.get(other.url + "/api/recordings")).json()["recordings"]
        assert [(x["recording_id"], x["state"]) for x in listed] == [(recording, "done")]
        r = await http.delete(f"{other.url}/api/recordings/{recording}")
        assert r.status_code == 200, r.text
        assert (await http.get(owner.url + "/api/recordings")).json()["recordings"] == []


def test_a_second_worker_with_a_node_id_in_use_does_not_start(cluster, redis_server, tmp_path):
    from cluster_nodes import Node

    twin = Node(cluster[0].name, redis_server.url, tmp_path / "twin").start()
    try:
        assert twin.proc.wait(60) != 0
        assert f"NODE_ID '{cluster[0].name}' is already used by a live worker" in twin.tail(80)
    finally:
        twin.stop()


async def test_a_recording_kept_on_another_machine_is_a_redirect_to_that_node(redis_server, tmp_path):
    """Two machines (separate RECORDINGS_DIR): a download through the other node is sent to the
    storing node's NODE_URL, query kept, and plays from there."""
    from cluster_nodes import Node

    nodes = []
    for name in ("node-a", "node-b"):
        node = Node(name, redis_server.url, tmp_path, RECORDINGS_DIR=str(tmp_path / name))
        node.env["NODE_URL"] = node.url
        nodes.append(node.start())
    try:
        for node in nodes:
            node.wait_ready()
        a, b = nodes
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(a.url + "/api/sources/default/record")
            assert r.status_code == 201, r.text
            recording = r.json()["recording_id"]
            await asyncio.sleep(2)
            assert (await http.delete(a.url + "/api/sources/default/record")).status_code == 200
            r = await http.get(f"{b.url}/api/recordings/{recording}?x=1")
            assert r.status_code == 307 and r.json()["code"] == "moved", r.text
            assert r.headers["location"] == f"{a.url}/api/recordings/{recording}?x=1"
            r = await http.get(r.headers["location"], headers={"Range": "bytes=0-99"})
            assert r.status_code == 206 and len(r.content) == 100
    finally:
        for node in nodes:
            node.stop()
