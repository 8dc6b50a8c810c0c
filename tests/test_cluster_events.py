"""Events in a cluster: workers on one real redis-server (tests/redis_server.py) share the
event history, ids and `Last-Event-ID` resume through the Redis Stream. Two (then three) apps
in this process play the workers; events are made on one with `emit` (what its visit trackers
do) and read over HTTP on another. Then Redis restarts empty, and an outage in between.

Timings are generous (a noisy 2-core box): every wait is for something to happen, never a
measure of how fast."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np

from cluster import ClusterDown
from cluster.eventlog import COUNTER, EventLog
from conftest import running_server
from sse_client import SseClient
from test_events import wait_until

PUBLIC_FIELDS = {"id", "source", "type", "ts", "count", "visit_id", "snapshot_id", "snapshot_url", "recording_id"}


def node(redis_server, name: str, **settings):
    return running_server(REDIS_URL=redis_server.url, NODE_ID=name, **settings)


async def listed(url: str, **params) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get("/api/events", params=params)
        assert r.status_code == 200, r.text
        return r.json()["events"]


async def test_the_id_counter_never_goes_below_what_a_worker_knows(redis_server):
    log = EventLog.open(redis_server.url, "n1", 10)
    event = {"source": "lobby", "type": "person_seen", "ts": 1.0, "count": 1}
    try:
        assert (await log.append(event, 0))["id"] == 1
        assert (await log.append(event, 41))["id"] == 42  # a worker that knows 41 ids
        assert (await log.append(event, 0))["id"] == 43
        await log.client.delete(COUNTER)  # the counter lost on its own: the stream's newest is a floor too
        assert (await log.append(event, 0))["id"] == 44
        await log.client.flushall()  # what a restart without persistence leaves
        assert await log.sync(100) == 0  # a reader lifts the counter to what its worker knows
        assert (await log.append(event, 0))["id"] == 101
        assert [e["id"] for e in await log.read(44, 0.1)] == [101]
        assert [e["id"] for e in await log.newest(5)] == [101]
    finally:
        await log.close()


async def test_every_worker_lists_streams_and_resumes_the_same_events(redis_server):
    image = np.full((480, 640, 3), 77, np.uint8)
    async with node(redis_server, "node-a") as (url_a, a), node(redis_server, "node-b") as (url_b, b):
        async with SseClient(url_b, "/api/events/stream") as live_b:
            made = [await a.events.emit("lobby", t, 2) for t in ("person_seen", "person_gone", "person_seen")]
            ids = [e["id"] for e in made]
            assert ids == sorted(ids) and len(set(ids)) == 3
            assert await live_b.wait_for(lambda ev: len(ev) >= 3, 15), live_b.events
            assert [e["id"] for e in live_b.events] == ids  # live on B, made on A
            assert all(set(e["data"]) == PUBLIC_FIELDS for e in live_b.events)  # `node` stays inside
            last_seen = live_b.events[-1]["id"]
        assert [e["id"] for e in await listed(url_b)] == ids[::-1] == [e["id"] for e in await listed(url_a)]
        assert all(set(e) == PUBLIC_FIELDS for e in await listed(url_b))
        assert [e["id"] for e in await listed(url_b, since=ids[0])] == ids[:0:-1]

        # missed by B's client meanwhile, made on both workers; it resumes on B, then on A: the same
        missed = [await a.events.emit("hall", "person_seen", 1), await b.events.emit("lobby", "person_gone", 2),
                  await a.events.emit("hall", "person_gone", 1)]
        missed_ids = [e["id"] for e in missed]
        assert missed_ids == sorted(missed_ids) and missed_ids[0] > last_seen
        for url in (url_b, url_a):
            async with SseClient(url, "/api/events/stream", headers={"Last-Event-ID": str(last_seen)}) as resumed:
                assert await resumed.wait_for(lambda ev: len(ev) >= 3, 15), resumed.events
                live = await a.events.emit("lobby", "person_seen", 3)
                assert await resumed.wait_for(lambda ev: any(e["id"] == live["id"] for e in ev), 15)
                await asyncio.sleep(0.3)  # nothing else (a duplicate) comes after it
            assert [e["id"] for e in resumed.events] == missed_ids + [live["id"]], resumed.events
            missed_ids.append(live["id"])  # the next client resumes from the same id: it misses this one too

        # a snapshot stays with its maker; another worker fetches it from the maker (cluster RPC)
        shot = await a.events.emit("lobby", "person_seen", 1, image)
        async with httpx.AsyncClient(base_url=url_b, timeout=30) as http:
            path = f"/api/events/{shot['id']}/snapshot.jpg"
            assert await wait_until(lambda: b.events.store.get(shot["id"]) is not None, 15)
            assert a.events.store.memory_snapshots and not b.events.store.memory_snapshots  # EVENTS_FILE=''
            r = await http.get(path)
            assert r.status_code == 200 and cv2.imdecode(np.frombuffer(r.content, np.uint8), 1).shape == (480, 640, 3)

        # a worker started later takes the history from Redis
        async with node(redis_server, "node-c") as (url_c, c):
            assert [e["id"] for e in await listed(url_c, limit=1000)] == [e["id"] for e in await listed(url_b, limit=1000)]
            assert c.events.stats()["cluster"]["redis"] == "ok"
        assert a.events.stats()["cluster"]["lost"] == 0 and b.events.stats()["cluster"]["appended"] == 1

        # a Last-Event-ID above all B holds: one the cluster gave (B's reader lags) keeps its place,
        # one above every id given is a reset (then everything kept)
        probe = EventLog.open(redis_server.url, "probe", 10)
        try:
            await probe.sync(10_000)  # the counter passes ids no worker holds yet
        finally:
            await probe.close()
        kept = [e["id"] for e in b.events.store.after(0)]
        async with SseClient(url_b, "/api/events/stream", headers={"Last-Event-ID": "5000"}) as lagging, \
                SseClient(url_b, "/api/events/stream", headers={"Last-Event-ID": str(10 ** 12)}) as reset:
            assert await reset.wait_for(lambda ev: len(ev) >= 1 + len(kept), 15), reset.events
            nxt = await a.events.emit("lobby", "person_gone", 1)
            assert nxt["id"] > 10_000
            for stream in (lagging, reset):
                assert await stream.wait_for(lambda ev: any(e["id"] == nxt["id"] for e in ev), 15), stream.events
        assert [e["id"] for e in lagging.events] == [nxt["id"]]
        assert reset.events[0]["event"] == "reset" and [e["id"] for e in reset.events[1:]] == kept + [nxt["id"]]


async def test_ids_keep_growing_after_redis_restarts_empty_and_events_wait_while_it_is_down(redis_server, caplog):
    kept = 5  # EVENTS_MAX: also how many events made during an outage wait for Redis
    async with node(redis_server, "node-a", EVENTS_MAX=kept) as (url_a, a), \
            node(redis_server, "node-b", EVENTS_MAX=kept) as (url_b, b):
        old = [await a.events.emit("lobby", "person_seen", 1) for _ in range(2)]
        async with SseClient(url_b, "/api/events/stream") as live_b:
            await asyncio.to_thread(redis_server.stop)
            assert await wait_until(lambda: a.events.stats()["cluster"]["redis"] == "down", 15)
            futures = [a.events.submit("lobby", "person_seen", 10 + i) for i in range(kept + 2)]
            assert await wait_until(lambda: a.events.stats()["cluster"]["lost"] == 2, 15), a.events.stats()
            assert a.events.stats()["cluster"]["waiting"] == kept and not any(f.done() for f in futures[2:])
            assert [e["id"] for e in await listed(url_b)] == [old[1]["id"], old[0]["id"]]  # B answers meanwhile
            assert "the oldest are dropped" in caplog.text

            await asyncio.to_thread(redis_server.start)  # empty: no stream, no counter
            done, _ = await asyncio.wait(futures, timeout=30)
            assert len(done) == len(futures)
            failed = [f for f in futures if f.exception() is not None]
            stored = [f.result() for f in futures if f.exception() is None]
            assert len(failed) == 2 and all(isinstance(f.exception(), ClusterDown) for f in failed)
            assert [e["count"] for e in stored] == sorted(e["count"] for e in stored)  # in the order made
            ids = [e["id"] for e in stored]
            assert ids == sorted(ids) and ids[0] > old[-1]["id"], ids
            newer = await b.events.emit("hall", "person_gone", 1)
            assert newer["id"] > ids[-1]
            assert await live_b.wait_for(lambda ev: any(e["id"] == newer["id"] for e in ev), 15), live_b.events
        assert [e["id"] for e in live_b.events] == ids + [newer["id"]]  # B's stream lived through the outage
        assert [e["id"] for e in await listed(url_b)] == (ids + [newer["id"]])[::-1][:kept]
        assert a.events.stats()["cluster"]["redis"] == "ok" and a.events.stats()["cluster"]["waiting"] == 0
