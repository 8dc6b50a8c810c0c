"""`EventLog`: the person events of every worker on one Redis Stream (doc/CLUSTER.md "Events").

Keys:

- `vg:events`: the stream, trimmed with `XADD MAXLEN ~ EVENTS_MAX`. Each entry's stream id is
  `<event id>-0` and its one field `e` is the event's JSON without its id, so a worker resumes
  reading (`XREAD`) right after the newest event it holds, with no second position to keep.
- `vg:events:id`: the id counter.

Ids stay the integers of the contract (`since`, `Last-Event-ID`). `append` is one Lua script:
INCR the counter, lifted above a floor when it is below (the newest id the caller knows, and the
newest entry of the stream), then XADD at that id. The counter and the stream change together,
atomically, so the stream's order is the ids' order and a reader that goes on from its newest id
misses nothing. A Redis that restarts empty starts its counter from the floor of the first worker
that writes to it: every worker passes its floor with each append and with `sync` (each reader
calls it about once a second), so ids keep growing cluster-wide. The limit: an event made in the
first second after such a restart, by a worker that had not yet read the newest events of
another one, can take an id that other worker already holds (that worker then skips it).

Every call raises `ClusterDown` while Redis cannot be reached (`cluster.connection.guarded`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import redis.asyncio as aioredis

from cluster.connection import connect, guarded

log = logging.getLogger("visionguard.cluster")

STREAM = "vg:events"
COUNTER = "vg:events:id"
READ_COUNT = 256  # entries per XREAD at most (a burst, or the history of a worker that started while Redis was down)

# the newest entry's event id (0: none) is the other floor: a counter lost on its own must not go back
_TOP = """
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local newest = 0
if top[1] then newest = tonumber(string.match(top[1][1], '^(%d+)')) end
"""

#: KEYS: stream, counter; ARGV: floor, maxlen, event JSON → the event's id
_APPEND = _TOP + """
local floor = tonumber(ARGV[1])
if newest > floor then floor = newest end
local id = redis.call('INCR', KEYS[2])
if id <= floor then
  id = floor + 1
  redis.call('SET', KEYS[2], string.format('%d', id))
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], string.format('%d-0', id), 'e', ARGV[3])
return id
"""

#: KEYS: stream, counter; ARGV: floor → the newest entry's event id (0: the stream is empty)
_SYNC = _TOP + """
local floor = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < floor then redis.call('SET', KEYS[2], string.format('%d', floor)) end
return newest
"""


def _entry_id(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


class EventLog:
    """The cluster's event stream, as one worker (`node_id`) sees it."""

    def __init__(self, client: aioredis.Redis, node_id: str, maxlen: int, key: str = STREAM,
                 counter: str = COUNTER, owns_client: bool = False) -> None:
        self.client = client
        self.node_id = node_id
        self.maxlen = maxlen
        self.key, self.counter = key, counter
        self.owns_client = owns_client  # made by `open`: closed with the log
        self._append = client.register_script(_APPEND)  # EVALSHA, loaded again after a restart
        self._sync = client.register_script(_SYNC)
        self.corrupt = 0  # entries skipped: not JSON, or not an object

    @classmethod
    def open(cls, url: str, node_id: str, maxlen: int) -> "EventLog":
        """A log with its own client (`cluster.connect`); a worker that shares one client builds
        `EventLog(client, ...)` itself and closes the client."""
        return cls(connect(url), node_id, maxlen, owns_client=True)

    async def close(self) -> None:
        if self.owns_client:
            await self.client.aclose()

    async def append(self, event: dict, floor: int) -> dict:
        """Store `event` (without an id) in the stream; return it with its id, above `floor`."""
        body = json.dumps({k: v for k, v in event.items() if k != "id"}, separators=(",", ":"))
        async with guarded():
            event_id = await self._append(keys=[self.key, self.counter], args=[max(floor, 0), self.maxlen, body])
        return {**event, "id": int(event_id)}

    async def sync(self, floor: int) -> int:
        """Lift the counter to `floor` if it is below; the newest entry's id (0: empty stream)."""
        async with guarded():
            return int(await self._sync(keys=[self.key, self.counter], args=[max(floor, 0)]))

    async def newest(self, count: int) -> list[dict]:
        """The newest `count` events, oldest first (the history a worker starts with)."""
        async with guarded():
            entries = await self.client.xrevrange(self.key, count=count)
        return self._parse(reversed(entries))

    async def read(self, after: int, block_s: float, count: int = READ_COUNT) -> list[dict]:
        """Events with ids above `after`, oldest first; waits up to `block_s` for the first one
        (keep it short: below the client's command timeout, and a reader that stops waits it out)."""
        async with guarded():
            reply = await self.client.xread({self.key: f"{after}-0"}, count=count, block=max(1, int(block_s * 1000)))
        if isinstance(reply, dict):  # RESP3
            entries = reply.get(self.key, [[]])[0]
        else:  # RESP2: [[key, entries]]
            entries = reply[0][1] if reply else []
        return self._parse(entries)

    async def last_id(self) -> int:
        """The counter: the newest id the cluster has given (0: none since Redis started)."""
        async with guarded():
            value = await self.client.get(self.counter)
        return int(value or 0)

    def _parse(self, entries: Any) -> list[dict]:
        out = []
        for stream_id, fields in entries:
            event: Optional[Any]
            try:
                event = json.loads(fields.get("e", ""))
            except ValueError:
                event = None
            if not isinstance(event, dict):
                self.corrupt += 1
                log.warning("events: skipped a corrupt entry %s of the Redis stream %s", stream_id, self.key)
                continue
            event["id"] = _entry_id(stream_id)
            out.append(event)
        return out
