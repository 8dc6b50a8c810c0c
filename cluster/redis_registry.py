"""`RedisRegistry`: the registry shared through Redis (REDIS_URL set). Keys (prefix `vg:`):

- `vg:sessions` sorted set, session id → expiry (ms, Redis clock): admission counts it, so a
  dead worker's sessions free their places by themselves; `vg:subject:<subject>` likewise per
  subject; `vg:session:<id>` a hash with the session's metadata (JSON), expiring with it.
- `vg:lease:<source>` = `<node>|<token>` with an expiry: the node running that source's
  pipeline; `vg:owned:<node>` the sources it holds (its load, checked against
  MAX_SOURCES_PER_WORKER). Lua in `cluster.scripts`.
- `vg:nodes` sorted set, node → expiry; `vg:node:<node>` its NODE_URL and lease count.
- `vg:run`: a token the first worker to touch a fresh Redis makes. A worker that sees it change
  (Redis restarted empty) grants no free lease for `SETTLE_S`, while the owners, which notice
  within a second, re-assert theirs: an offer reaching another worker first gets 503 then,
  rather than opening the camera a second time.
- `vg:source:<source>` the owner's view of the source (state, fps, viewers) for `/api/sources`.

Every SESSION_TTL_S/3 the keeper (`tick`) refreshes what this node holds: node heartbeat,
sessions, leases; every second it refreshes source states and checks `vg:run`. Everything it writes expires after SESSION_TTL_S, so a
killed worker leaves nothing behind for longer than that, and after Redis restarts empty the
next tick writes it all again (leases re-asserted with new, greater tokens).

Lease renewal finds one of three things: still ours (renewed), gone (re-asserted), or another
node's (we are stale: `on_lost` stops the source here at once). A source running here without
a lease (it was released while an offer took it again) is claimed again, or stopped. While Redis is unreachable the
pipelines keep running: no other node can be granted a lease then either (see doc/CLUSTER.md
for the partition case).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from contextlib import asynccontextmanager
from typing import Awaitable, Callable, Optional

from cluster import scripts
from cluster.connection import ClusterDown, guarded
from cluster.registry import Lease, NodeInfo

log = logging.getLogger("visionguard.cluster")

P = "vg:"
RELEASE_GRACE_S = 3.0  # a lease claimed is kept this long before its pipeline must be running
LIGHT_EVERY_S = 1.0  # source figures for the other nodes, and the `vg:run` check
SETTLE_S = 2 * LIGHT_EVERY_S + 0.5  # after Redis restarted: owners re-assert within a light round
RETRY_DOWN_S = 1.0  # while Redis is down, requests fail at once; the keeper tries again this often


class Settling(Exception):
    """Redis restarted a moment ago: free sources are not handed out until owners re-asserted."""


class AtCapacity(Exception):
    """Every live worker runs MAX_SOURCES_PER_WORKER sources."""


def _split(value: str) -> tuple[str, int]:
    node, _, token = value.rpartition("|")
    return node, int(token)


class RedisRegistry:
    shared = True

    def __init__(self, client, node_id: str, ttl_s: float, node_url: Optional[str] = None,
                 capacity: int = 0) -> None:
        self.r = client
        self.node_id = node_id
        self.ttl_ms = int(ttl_s * 1000)
        self.interval = ttl_s / 3
        self.node_url = node_url
        self.capacity = capacity  # MAX_SOURCES_PER_WORKER (0: no limit)
        self.up = False
        self._down_until = 0.0  # monotonic: fail fast until then (Redis was unreachable)
        self.run: Optional[str] = None  # the `vg:run` token of the Redis this node knows
        self.settled_at = 0.0  # monotonic: free leases may be granted from then on
        self.leases: dict[str, Lease] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # claim vs release
        self.live_nodes = 0
        #: set by the app: this node's sessions (metadata), the sources it runs, and their state
        self.local_sessions: Callable[[], list[dict]] = list
        self.running_sources: Callable[[], set[str]] = set
        self.source_state: Callable[[str], Optional[dict]] = lambda source: None
        #: stop `source` here now: its lease is another node's (called on the loop)
        self.on_lost: Callable[[str], Awaitable[None]] = self._nothing
        self._task: Optional[asyncio.Task] = None
        self._take = client.register_script(scripts.TAKE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)
        self._admit = client.register_script(scripts.ADMIT)
        self._hold = client.register_script(scripts.HOLD)
        self.lost_leases = 0  # for /info and tests

    @staticmethod
    async def _nothing(source: str) -> None:
        pass

    @asynccontextmanager
    async def _redis(self, probe: bool = False):
        """`guarded`, keeping `up` true to the last thing Redis did (or did not) answer. While it
        is down, requests fail at once (`probe`: the keeper's tries go through)."""
        if not probe and not self.up and time.monotonic() < self._down_until:
            raise ClusterDown("Redis is unreachable")
        try:
            async with guarded():
                yield
        except ClusterDown:
            self.up = False
            self._down_until = time.monotonic() + RETRY_DOWN_S
            raise
        self.up = True

    def _keys(self, source: str) -> list[str]:
        return [P + "lease:" + source, P + "fence", P + "owned:" + self.node_id]

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.tick()  # a Redis that is down now is not fatal: the keeper keeps trying
        self._task = asyncio.create_task(self._keep(), name="vg-cluster-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:  # leave at once rather than after SESSION_TTL_S: another node may take over now
            async with guarded():
                for lease in list(self.leases.values()):
                    await self._release(keys=[P + "lease:" + lease.source, P + "owned:" + self.node_id],
                                        args=[f"{self.node_id}|{lease.token}", lease.source])
                await self.r.zrem(P + "nodes", self.node_id)
                await self.r.delete(P + "node:" + self.node_id)
        except ClusterDown:
            pass
        self.leases.clear()
        await self.r.aclose()

    async def _keep(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(min(LIGHT_EVERY_S, self.interval))
            try:
                restarted = await self._light()
                if restarted or time.monotonic() >= due:
                    due = time.monotonic() + self.interval
                    await self.tick()
            except ClusterDown:
                pass  # `up` says so
            except Exception:  # the keeper must outlive anything one round meets
                log.exception("cluster keeper")

    async def _light(self) -> bool:
        """Between ticks: is this still the Redis we knew (True: it restarted), and the figures
        other nodes show for our sources."""
        async with self._redis(probe=True):
            restarted = await self._check_run()
            await self._publish_states()
        return restarted

    async def _check_run(self) -> bool:
        run = await self.r.get(P + "run")
        if run is None:  # a fresh Redis: the first worker to see it names it
            await self.r.set(P + "run", uuid.uuid4().hex, nx=True)
            run = await self.r.get(P + "run")
        known, self.run = self.run, run
        if known is not None and run != known:
            self.settled_at = time.monotonic() + SETTLE_S
            log.warning("cluster: Redis restarted; re-asserting this node's leases and sessions")
            return True
        return False

    async def tick(self) -> None:
        was_up = self.up
        try:
            async with self._redis(probe=True):
                await self._check_run()
                await self._heartbeat()
                await self._renew_leases()
                await self.publish(self.local_sessions())
            if not was_up:
                log.info("cluster: Redis reachable (node %s)", self.node_id)
        except ClusterDown as exc:
            if was_up:
                log.warning("cluster: %s; video keeps flowing, new offers are refused until it returns", exc)

    async def _now_ms(self) -> int:
        sec, usec = await self.r.time()
        return sec * 1000 + usec // 1000

    async def _heartbeat(self) -> None:
        now = await self._now_ms()
        info = json.dumps({"url": self.node_url, "sources": len(self.leases)})
        async with self.r.pipeline(transaction=False) as p:
            p.zremrangebyscore(P + "nodes", "-inf", now)
            p.zadd(P + "nodes", {self.node_id: now + self.ttl_ms})
            p.set(P + "node:" + self.node_id, info, px=self.ttl_ms)
            p.zcard(P + "nodes")
            self.live_nodes = (await p.execute())[-1]

    async def _renew_leases(self) -> None:
        lost = set()
        for source, lease in list(self.leases.items()):
            async with self._locks[source]:  # no claim of this source meanwhile
                if self.leases.get(source) is not lease:
                    continue
                key, keys = P + "lease:" + source, self._keys(source)
                mine = f"{self.node_id}|{lease.token}"
                if source not in self.running_sources() and time.monotonic() - lease.taken > RELEASE_GRACE_S:
                    await self._release(keys=[key, keys[2]], args=[mine, source])
                    await self.r.delete(P + "source:" + source)
                    del self.leases[source]
                    continue
                value = await self._renew(keys=keys, args=[self.node_id, self.ttl_ms, source, lease.token])
            node, token = _split(value)
            if node != self.node_id:
                lost.add(source)
                await self._lost(source, node)
                continue
            if token != lease.token:
                log.info("cluster: lease of %s re-asserted (token %d)", source, token)
            lease.token, lease.renewed = token, time.monotonic()
        for source in self.running_sources() - set(self.leases) - lost:  # running without a lease here
            try:
                holder = await self.claim(source, hops=1)
            except (Settling, AtCapacity) as exc:
                holder = None if isinstance(exc, Settling) else "nobody (this node is at its capacity)"
            if holder is not None:
                await self._lost(source, holder)
        await self._publish_states()

    async def _lost(self, source: str, holder: str) -> None:
        self.leases.pop(source, None)
        self.lost_leases += 1
        log.warning("cluster: source %s is now run by %s; stopping it here", source, holder)
        await self.on_lost(source)

    async def _publish_states(self) -> None:
        states = {s: self.source_state(s) for s in list(self.leases)}
        if states:
            async with self.r.pipeline(transaction=False) as p:
                for source, state in states.items():
                    if state is not None:
                        p.set(P + "source:" + source, json.dumps(state), px=self.ttl_ms)
                await p.execute()

    # -- admission --------------------------------------------------------------------
    async def admit(self, session_id: str, subject: str, max_total: int, max_per_subject: Optional[int]
                    ) -> Optional[str]:
        async with self._redis():
            result = await self._admit(keys=[P + "sessions", P + "subject:" + subject],
                                       args=[session_id, self.ttl_ms, max_total, max_per_subject or 0])
        return None if result == "ok" else result

    async def hold(self, session_id: str, subject: str) -> bool:
        """Keep an admitted place that is not a session yet (an offer still being answered)."""
        async with self._redis():
            return bool(await self._hold(keys=[P + "sessions", P + "subject:" + subject],
                                         args=[session_id, self.ttl_ms]))

    async def forget(self, session_id: str, subject: str) -> None:
        try:
            async with self._redis():
                async with self.r.pipeline(transaction=False) as p:
                    p.zrem(P + "sessions", session_id)
                    p.zrem(P + "subject:" + subject, session_id)
                    p.delete(P + "session:" + session_id)
                    await p.execute()
        except ClusterDown:  # it expires by itself
            pass

    # -- sessions -----------------------------------------------------------------------
    async def publish(self, metas: list[dict]) -> None:
        """Write (or refresh) this node's sessions; their places and metadata expire in SESSION_TTL_S."""
        if not metas:
            return
        async with self._redis():
            now = await self._now_ms()
            expiry = now + self.ttl_ms
            async with self.r.pipeline(transaction=False) as p:
                for meta in metas:
                    sid, subject = meta["session_id"], meta["subject"]
                    p.zadd(P + "sessions", {sid: expiry})
                    p.zadd(P + "subject:" + subject, {sid: expiry})
                    p.pexpire(P + "subject:" + subject, self.ttl_ms)
                    p.set(P + "session:" + sid, json.dumps({**meta, "node": self.node_id, "last_seen": now}),
                          px=self.ttl_ms)
                await p.execute()

    async def sessions(self) -> list[dict]:
        async with self._redis():
            now = await self._now_ms()
            ids = await self.r.zrangebyscore(P + "sessions", now, "+inf")
            if not ids:
                return []
            values = await self.r.mget([P + "session:" + sid for sid in ids])
        return [json.loads(v) for v in values if v]  # an offer still being answered has no metadata yet

    async def session(self, session_id: str) -> Optional[dict]:
        async with self._redis():
            value = await self.r.get(P + "session:" + session_id)
        return json.loads(value) if value else None

    # -- sources -------------------------------------------------------------------------
    def owns(self, source: str) -> bool:
        return source in self.leases

    async def owner(self, source: str) -> Optional[str]:
        if source in self.leases:
            return self.node_id
        async with self._redis():
            value = await self.r.get(P + "lease:" + source)
        return _split(value)[0] if value else None

    async def claim(self, source: str, hops: int = 0) -> Optional[str]:
        """None when this node runs `source` (its lease is held now), else the node that runs it,
        or should: a free source goes to the live node with the fewest leases that is below
        MAX_SOURCES_PER_WORKER (`hops` > 0: an offer already handed here: this node takes it if
        it may). Raises `Settling` right after a Redis restart, `AtCapacity` when no node may."""
        async with self._locks[source]:
            lease = self.leases.get(source)
            if lease is not None:
                lease.taken = time.monotonic()  # wanted again: not released before it runs
                return None
            async with self._redis():
                value = await self.r.get(P + "lease:" + source)
                if value is None:
                    if time.monotonic() < self.settled_at:
                        raise Settling()
                    target = await self._least_loaded() if hops == 0 else self.node_id
                    if target != self.node_id:
                        return target
                    value = await self._grant(source)
                    if value.startswith("run:"):  # not the Redis this node knew (or it knew none yet)
                        if await self._check_run() or time.monotonic() < self.settled_at:
                            raise Settling()  # it restarted: the owners re-assert first
                        value = await self._grant(source)
            if value == "full":
                raise AtCapacity()
            if value.startswith("run:"):
                raise Settling()
            node, token = _split(value)
            if node != self.node_id:
                return node
            self.leases[source] = Lease(source, token, taken=time.monotonic())
            return None

    async def _grant(self, source: str) -> str:
        return await self._take(keys=[*self._keys(source), P + "run"],
                                args=[self.node_id, self.ttl_ms, source, self.capacity, self.run or ""])

    async def _least_loaded(self) -> str:
        """The live node (this one on a tie) with the fewest leases, below capacity."""
        now = await self._now_ms()
        live = set(await self.r.zrangebyscore(P + "nodes", now, "+inf")) | {self.node_id}
        names = sorted(live)
        async with self.r.pipeline(transaction=False) as p:
            for name in names:
                p.zcount(P + "owned:" + name, now, "+inf")
            loads = dict(zip(names, await p.execute()))
        free = [n for n in names if not self.capacity or loads[n] < self.capacity]
        if not free:
            raise AtCapacity()
        return min(free, key=lambda n: (loads[n], n != self.node_id, n))

    async def source_states(self) -> dict[str, dict]:
        async with self._redis():
            keys = [k async for k in self.r.scan_iter(match=P + "source:*", count=500)]
            values = await self.r.mget(keys) if keys else []
        return {k[len(P + "source:"):]: json.loads(v) for k, v in zip(keys, values) if v}

    async def nodes(self) -> dict[str, NodeInfo]:
        async with self._redis():
            now = await self._now_ms()
            names = await self.r.zrangebyscore(P + "nodes", now, "+inf")
            values = await self.r.mget([P + "node:" + n for n in names]) if names else []
        found = {}
        for name, value in zip(names, values):
            info = json.loads(value) if value else {}
            found[name] = NodeInfo(name, info.get("url"), info.get("sources", 0))
        return found
