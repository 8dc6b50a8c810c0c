"""The Redis registry's rules on a real redis-server, without workers: admission per subject and
in total, places that free themselves, and lease tokens that only grow."""

from __future__ import annotations

import asyncio

from cluster.connection import connect
from cluster.redis_registry import RedisRegistry


def registry(redis_server, node: str, ttl_s: float = 2.0) -> RedisRegistry:
    return RedisRegistry(connect(redis_server.url), node, ttl_s)


async def test_admission_counts_the_whole_cluster_and_each_subject(redis_server):
    a, b = registry(redis_server, "a"), registry(redis_server, "b")
    try:
        assert await a.admit("s1", "alice", 3, 2) is None
        assert await b.admit("s2", "alice", 3, 2) is None
        assert await a.admit("s3", "alice", 3, 2) == "subject_limit"  # alice's share, across nodes
        assert await b.admit("s3", "bob", 3, 2) is None
        assert await a.admit("s4", "carol", 3, 2) == "server_full"
        await b.forget("s2", "alice")
        assert await a.admit("s4", "carol", 3, 2) is None
        # nobody refreshes these: a dead worker's places free themselves within the TTL
        await asyncio.sleep(2.5)
        assert [await a.admit(f"n{i}", "dave", 3, None) for i in range(4)] == [None, None, None, "server_full"]
    finally:
        await a.stop()
        await b.stop()


async def test_a_session_refreshed_by_its_owner_stays_and_is_described_everywhere(redis_server):
    a, b = registry(redis_server, "a"), registry(redis_server, "b")
    try:
        meta = {"session_id": "s1", "subject": "alice", "source": "default", "model": "none", "mode": "view"}
        assert await a.admit("s1", "alice", 10, None) is None
        await a.publish([meta])
        for _ in range(3):  # refreshed within the TTL: it stays
            await asyncio.sleep(1.0)
            await a.publish([meta])
        assert [m["session_id"] for m in await b.sessions()] == ["s1"]
        assert (await b.session("s1"))["node"] == "a"
        await asyncio.sleep(2.5)  # no longer refreshed: gone
        assert await b.sessions() == [] and await b.session("s1") is None
    finally:
        await a.stop()
        await b.stop()


async def test_lease_tokens_grow_across_grants_and_redis_restarts(redis_server):
    a, b = registry(redis_server, "a"), registry(redis_server, "b")
    try:
        assert await a.claim("lobby", hops=1) is None  # a takes it
        first = a.leases["lobby"].token
        assert await b.claim("lobby", hops=1) == "a"  # b is told who runs it
        a.running_sources = lambda: {"lobby"}
        redis_server.stop()
        redis_server.start()  # empty: the lease is gone
        await a.tick()  # re-asserted with a greater token
        assert a.leases["lobby"].token > first
        assert await b.owner("lobby") == "a"
        # another node holds it now with a greater token: a is stale and stops the source
        stopped = []

        async def on_lost(source: str) -> None:
            stopped.append(source)

        a.on_lost = on_lost
        await b.r.set("vg:lease:lobby", f"b|{a.leases['lobby'].token + 1}", px=10_000)
        await a.tick()
        assert stopped == ["lobby"] and "lobby" not in a.leases and a.lost_leases == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_worker_at_its_capacity_takes_no_lease_and_places_held_by_an_offer_stay(redis_server):
    import pytest

    from cluster.redis_registry import AtCapacity

    a, b = (RedisRegistry(connect(redis_server.url), n, 2.0, capacity=1) for n in "ab")
    try:
        await a.tick()
        await b.tick()  # both live
        assert await a.claim("s1", hops=1) is None
        with pytest.raises(AtCapacity):  # handed to a, which is full
            await a.claim("s2", hops=1)
        assert await a.claim("s2") == "b"  # a free source goes to a node below its capacity
        assert await b.claim("s2", hops=1) is None
        with pytest.raises(AtCapacity):  # every node is full
            await a.claim("s3")
        # an offer in flight keeps its place past the TTL while it is held, and loses it after
        assert await a.admit("o1", "alice", 10, None) is None
        for _ in range(4):
            await asyncio.sleep(0.7)
            assert await a.hold("o1", "alice")
        await asyncio.sleep(2.3)
        assert not await a.hold("o1", "alice")
    finally:
        await a.stop()
        await b.stop()


async def test_a_node_that_never_answers_is_a_504_and_a_gone_one_a_503(redis_server):
    """What the routes answer when the node holding a session or source does not reply in time
    (it listens but is stuck) or has no listener at all (it died)."""
    import pytest

    from api.cluster import ClusterService
    from api.errors import ApiError
    from cluster.rpc import Rpc

    stuck = connect(redis_server.url).pubsub()
    await stuck.subscribe("vg:rpc:stuck")  # listens, never replies
    rpc = Rpc(connect(redis_server.url), "asker")
    await rpc.start()
    service = ClusterService.__new__(ClusterService)  # only `ask` is used: the RPC and its mapping
    service.rpc = rpc
    try:
        with pytest.raises(ApiError) as timeout:
            await service.ask("stuck", "close", {"session_id": "s1"}, timeout=0.5)
        assert timeout.value.status_code == 504 and timeout.value.code == "cluster_timeout"
        with pytest.raises(ApiError) as gone:
            await service.ask("dead", "close", {"session_id": "s1"}, timeout=0.5)
        assert gone.value.status_code == 503 and gone.value.code == "cluster_unavailable"
    finally:
        await rpc.stop()
        await stuck.aclose()
