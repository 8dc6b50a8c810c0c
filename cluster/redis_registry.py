"""`RedisRegistry`: the registry shared through Redis (REDIS_URL set). Keys (prefix `vg:`):

- `vg:sessions` sorted set, session id → expiry (ms, Redis clock): admission counts it, so a
  dead worker's sessions free their places by themselves; `vg:subject:<subject>` likewise per
  subject; `vg:session:<id>` a hash with the session's metadata (JSON), expiring with it.
- `vg:lease:<source>` = `<node>|<token>` with an expiry: the node running that source's
  pipeline. `vg:fence` hands out tokens that only grow (never below the Redis clock in ms, so
  they keep growing after Redis restarts empty).
- `vg:nodes` sorted set, node → expiry; `vg:node:<node>` its NODE_URL and lease count.
- `vg:source:<source>` the owner's view of the source (state, fps, viewers) for `/api/sources`.

Every SESSION_TTL_S/3 the keeper (`tick`) refreshes what this node holds: node heartbeat,
sessions, leases, source states. Everything it writes expires after SESSION_TTL_S, so a
killed worker leaves nothing behind for longer than that, and after Redis restarts empty the
next tick writes it all again (leases re-asserted with new, greater tokens).

Lease renewal finds one of three things: still ours (renewed), gone (re-asserted), or another
node's (we are stale: `on_lost` stops the source here at once). While Redis is unreachable the
pipelines keep running: no other node can be granted a lease then either (see doc/CLUSTER.md
for the partition case).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Awaitable, Callable, Optional

from cluster.connection import UNREACHABLE, ClusterDown, guarded
from cluster.registry import Lease, NodeInfo

log = logging.getLogger("visionguard.cluster")

P = "vg:"
NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
GRANT = ("local token = redis.call('INCR', KEYS[2]) "
         "if token < now then redis.call('SET', KEYS[2], now) token = now end "
         "local value = ARGV[1] .. '|' .. token "
         "redis.call('SET', KEYS[1], value, 'PX', ARGV[2]) return value ")
# KEYS: lease, fence; ARGV: node, ttl_ms → the lease's value (ours if it was free)
TAKE = NOW_MS + "local cur = redis.call('GET', KEYS[1]) if cur then return cur end " + GRANT
# KEYS: lease, fence; ARGV: node, ttl_ms, token → ours renewed, ours re-asserted (new token), or another's
RENEW = (NOW_MS + "local cur = redis.call('GET', KEYS[1]) local mine = ARGV[1] .. '|' .. ARGV[3] "
         "if cur == mine then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return mine end "
         "if cur then return cur end " + GRANT)
# KEYS: lease; ARGV: value
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: sessions, subject; ARGV: id, ttl_ms, max_total, max_per_subject (0: none) → ok | server_full | subject_limit
ADMIT = (NOW_MS + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
         "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) "
         "if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ok' end "
         "if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 'server_full' end "
         "if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 'subject_limit' end "
         "redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1]) redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[1]) "
         "redis.call('PEXPIRE', KEYS[2], ARGV[2]) return 'ok'")

RELEASE_GRACE_S = 3.0
STATES_EVERY_S = 1.0  # how often the owner refreshes its sources' figures for the other nodes  # a lease just taken is kept this long before its pipeline must be running


def _split(value: str) -> tuple[str, int]:
    node, _, token = value.rpartition("|")
    return node, int(token)


class RedisRegistry:
    shared = True

    def __init__(self, client, node_id: str, ttl_s: float, node_url: Optional[str] = None) -> None:
        self.r = client
        self.node_id = node_id
        self.ttl_ms = int(ttl_s * 1000)
        self.interval = ttl_s / 3
        self.node_url = node_url
        self.up = False
        self.leases: dict[str, Lease] = {}
        #: set by the app: this node's sessions (metadata), the sources it runs, and their state
        self.local_sessions: Callable[[], list[dict]] = list
        self.running_sources: Callable[[], set[str]] = set
        self.source_state: Callable[[str], Optional[dict]] = lambda source: None
        #: stop `source` here now: its lease is another node's (called on the loop)
        self.on_lost: Callable[[str], Awaitable[None]] = self._nothing
        self._task: Optional[asyncio.Task] = None
        self._take = client.register_script(TAKE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._admit = client.register_script(ADMIT)
        self.lost_leases = 0  # for /info and tests

    @staticmethod
    async def _nothing(source: str) -> None:
        pass

    @asynccontextmanager
    async def _redis(self):
        """`guarded`, keeping `up` true to the last thing Redis did (or did not) answer."""
        try:
            async with guarded():
                yield
        except ClusterDown:
            self.up = False
            raise
        self.up = True

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.tick()  # a Redis that is down now is not fatal: the keeper keeps trying
        self._task = asyncio.create_task(self._keep(), name="vg-cluster-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:  # leave at once rather than after SESSION_TTL_S: another node may take over now
            for lease in list(self.leases.values()):
                await self._release(keys=[P + "lease:" + lease.source], args=[f"{self.node_id}|{lease.token}"])
            await self.r.zrem(P + "nodes", self.node_id)
            await self.r.delete(P + "node:" + self.node_id)
        except UNREACHABLE:
            pass
        self.leases.clear()
        await self.r.aclose()

    async def _keep(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(min(STATES_EVERY_S, self.interval))
            try:
                if time.monotonic() >= due:
                    due = time.monotonic() + self.interval
                    await self.tick()
                else:  # between ticks, the figures other nodes show in /api/sources stay fresh
                    async with guarded():
                        await self._publish_states()
            except ClusterDown:
                pass  # the next tick says so
            except Exception:  # the keeper must outlive anything one tick meets
                log.exception("cluster keeper")

    async def tick(self) -> None:
        was_up = self.up
        try:
            async with self._redis():
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
            await p.execute()

    async def _renew_leases(self) -> None:
        running = self.running_sources()
        mono = time.monotonic()
        for source, lease in list(self.leases.items()):
            key = P + "lease:" + source
            if source not in running and mono - lease.taken > RELEASE_GRACE_S:
                await self._release(keys=[key], args=[f"{self.node_id}|{lease.token}"])
                await self.r.delete(P + "source:" + source)
                self.leases.pop(source, None)
                continue
            value = await self._renew(keys=[key, P + "fence"], args=[self.node_id, self.ttl_ms, lease.token])
            node, token = _split(value)
            if node != self.node_id:
                await self._lost(source, node)
                continue
            if token != lease.token:
                log.info("cluster: lease of %s re-asserted (token %d)", source, token)
            lease.token, lease.renewed = token, mono
        await self._publish_states()

    async def _publish_states(self) -> None:
        states = {s: self.source_state(s) for s in list(self.leases)}
        if states:
            async with self.r.pipeline(transaction=False) as p:
                for source, state in states.items():
                    if state is not None:
                        p.set(P + "source:" + source, json.dumps(state), px=self.ttl_ms)
                await p.execute()

    async def _lost(self, source: str, holder: str) -> None:
        self.leases.pop(source, None)
        self.lost_leases += 1
        log.warning("cluster: source %s is now run by %s; stopping it here", source, holder)
        await self.on_lost(source)

    # -- admission --------------------------------------------------------------------
    async def admit(self, session_id: str, subject: str, max_total: int, max_per_subject: Optional[int]
                    ) -> Optional[str]:
        async with self._redis():
            result = await self._admit(keys=[P + "sessions", P + "subject:" + subject],
                                       args=[session_id, self.ttl_ms, max_total, max_per_subject or 0])
        return None if result == "ok" else result

    async def forget(self, session_id: str, subject: str) -> None:
        try:
            async with self.r.pipeline(transaction=False) as p:
                p.zrem(P + "sessions", session_id)
                p.zrem(P + "subject:" + subject, session_id)
                p.delete(P + "session:" + session_id)
                await p.execute()
        except UNREACHABLE:  # it expires by itself
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
        """None when this node runs `source` (lease held), else the node that runs it, or should:
        a free source goes to the least-loaded live node (the fair share is a node's capacity;
        `hops` > 0: an offer already handed here, so this node takes it)."""
        if source in self.leases:
            return None
        async with self._redis():
            value = await self.r.get(P + "lease:" + source)
            if value is None and hops == 0:
                target = await self._least_loaded()
                if target != self.node_id:
                    return target
            if value is None:
                value = await self._take(keys=[P + "lease:" + source, P + "fence"], args=[self.node_id, self.ttl_ms])
        node, token = _split(value)
        if node != self.node_id:
            return node
        self.leases[source] = Lease(source, token, taken=time.monotonic())
        return None

    async def _least_loaded(self) -> str:
        live = await self.nodes()
        loads = {node: 0 for node in live}
        loads.setdefault(self.node_id, 0)
        async for key in self.r.scan_iter(match=P + "lease:*", count=500):
            value = await self.r.get(key)
            if value:
                holder = _split(value)[0]
                if holder in loads:
                    loads[holder] += 1
        # fewest leases wins; this node on a tie (no hand-off when it makes no difference)
        return min(loads, key=lambda n: (loads[n], n != self.node_id, n))

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
